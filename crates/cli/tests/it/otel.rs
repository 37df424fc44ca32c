//! OpenTelemetry export (feature `otel`): the proxy sends its spans over OTLP/HTTP to a
//! collector — here a fake one on a real socket that keeps every OTLP/JSON body it receives.

use super::harness::{Launch, Raw, Server, WAIT, lossy};
use axum::extract::State;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Bodies = Arc<Mutex<Vec<Value>>>;

async fn collect(
    State(bodies): State<Bodies>,
    body: String,
) -> ([(&'static str, &'static str); 1], String) {
    let v: Value = serde_json::from_str(&body).expect("OTLP/JSON body");
    bodies.lock().unwrap().push(v);
    ([("content-type", "application/json")], "{}".to_owned())
}

async fn collector() -> (String, Bodies) {
    let bodies: Bodies = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(collect))
        .with_state(bodies.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), bodies)
}

/// An exported span: its name, string/int attributes, and its resource's service name.
#[derive(Debug)]
struct Span {
    name: String,
    service: String,
    attrs: HashMap<String, String>,
}

fn attr_map(list: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for a in list.as_array().into_iter().flatten() {
        let v = &a["value"];
        let text = v["stringValue"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| v["intValue"].as_str().map(str::to_owned))
            .or_else(|| v["intValue"].as_i64().map(|i| i.to_string()))
            .unwrap_or_else(|| v.to_string());
        out.insert(a["key"].as_str().unwrap_or_default().to_owned(), text);
    }
    out
}

fn spans(bodies: &Bodies) -> Vec<Span> {
    let mut out = Vec::new();
    for body in bodies.lock().unwrap().iter() {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = attr_map(&rs["resource"]["attributes"])
                .remove("service.name")
                .unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push(Span {
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        service: service.clone(),
                        attrs: attr_map(&s["attributes"]),
                    });
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn request_spans_reach_an_otlp_collector() {
    let (endpoint, bodies) = collector().await;
    let p = Server::start_with_env(
        &[
            "forward",
            "http",
            "--listen",
            "127.0.0.1:0",
            "--demo",
            // Traces are filtered apart from logs: a quiet log keeps them.
            "--log-level",
            "warn",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "shadowcat-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    assert_eq!(c.call_tool(1, "add", json!({"a": 2, "b": 3})).await, "5");
    let sid = c.session.clone().unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    let call = loop {
        let found = spans(&bodies).into_iter().find(|s| {
            s.name == "request" && s.attrs.get("rpc").map(String::as_str) == Some("tools/call")
        });
        if let Some(s) = found {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tools/call request span exported; got {:?}",
            spans(&bodies)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(call.service, "shadowcat-under-test");
    assert_eq!(call.attrs["name"], "add");
    assert_eq!(call.attrs["method"], "POST");
    assert_eq!(call.attrs["path"], "/mcp");
    assert_eq!(call.attrs["session"], sid);
    assert_eq!(call.attrs["status"], "200");
    assert_eq!(p.terminate().await, Some(0));
    // The session span closes at shutdown and is flushed before the process exits.
    assert!(
        spans(&bodies)
            .iter()
            .any(|s| s.name == "session" && s.attrs.get("id") == Some(&sid)),
        "no session span after shutdown: {:?}",
        spans(&bodies)
    );
}

#[test]
fn an_unsupported_otlp_protocol_is_refused_at_start() {
    let out = Launch::shadowcat(&["forward", "http", "--listen", "127.0.0.1:0", "--demo"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .run();
    assert!(!out.status.success());
    let err = lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL `grpc` is not supported"),
        "stderr: {err}"
    );
}
