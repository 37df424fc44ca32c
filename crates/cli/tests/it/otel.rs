//! OpenTelemetry export (feature `otel`): the proxy sends its spans over OTLP/HTTP or OTLP/gRPC
//! to a collector — here fake ones on real sockets that keep every OTLP/JSON body, or every
//! decoded gRPC export, they receive.

use super::harness::{Launch, Raw, Server, WAIT, lossy};
use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
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
    trace_id: String,
    span_id: String,
    parent: String,
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
                        trace_id: s["traceId"].as_str().unwrap_or_default().to_owned(),
                        span_id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                    });
                }
            }
        }
    }
    out
}

/// `forward http --demo` exporting its spans to `endpoint` over `protocol` as `service`, after
/// one `add` call through it: the proxy (keep it alive until the spans are in) and the
/// session's id.
async fn traced_call(endpoint: &str, protocol: &str, service: &str) -> (Server, String) {
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
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_SERVICE_NAME", service),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let mut c = Raw::new(p.url());
    c.initialize().await;
    assert_eq!(c.call_tool(1, "add", json!({"a": 2, "b": 3})).await, "5");
    let sid = c.session.clone().unwrap();
    (p, sid)
}

#[tokio::test]
async fn request_spans_reach_an_otlp_collector() {
    let (endpoint, bodies) = collector().await;
    let (p, sid) = traced_call(&endpoint, "http/json", "shadowcat-under-test").await;

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
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
        .run();
    assert!(!out.status.success());
    let err = lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL `thrift` is not supported"),
        "stderr: {err}"
    );
}

type Exports = Arc<Mutex<Vec<(String, String, ExportTraceServiceRequest)>>>;

/// A fake OTLP/gRPC collector: HTTP/2 without TLS (as gRPC to an `http://` endpoint is),
/// keeping every request it gets — path, content type and the decoded export — and answering
/// each as a gRPC server does (an empty `ExportTraceServiceResponse`, `grpc-status: 0`).
async fn grpc_collector() -> (String, Exports) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Exports = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let keep = keep.clone();
                    tokio::spawn(async move {
                        let (parts, mut body) = req.into_parts();
                        let mut bytes = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            bytes.extend_from_slice(&chunk);
                        }
                        // A gRPC message: a compression flag, a 4-byte length, the protobuf.
                        assert!(bytes.len() >= 5 && bytes[0] == 0, "{bytes:?}");
                        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                        assert_eq!(len as usize, bytes.len() - 5);
                        let export = ExportTraceServiceRequest::decode(&bytes[5..]).unwrap();
                        let content_type = parts
                            .headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        keep.lock().unwrap().push((
                            parts.uri.path().to_owned(),
                            content_type,
                            export,
                        ));
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(response, false) else {
                            return;
                        };
                        let _ = send.send_data(bytes::Bytes::from_static(&[0; 5]), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
    (format!("http://{addr}"), got)
}

/// The exported spans' (service name, span name) pairs.
fn grpc_spans(got: &Exports) -> Vec<(String, String)> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let mut out = Vec::new();
    for (_, _, export) in got.lock().unwrap().iter() {
        for rs in &export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Any::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                out.push((service.clone(), span.name.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn spans_reach_a_collector_over_otlp_grpc() {
    let (endpoint, got) = grpc_collector().await;
    let (p, _) = traced_call(&endpoint, "grpc", "shadowcat-over-grpc").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !grpc_spans(&got).iter().any(|(_, name)| name == "request") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request span exported over gRPC; got {:?}",
            grpc_spans(&got)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(p.terminate().await, Some(0));
    for (path, content_type, _) in got.lock().unwrap().iter() {
        assert_eq!(
            path,
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        assert!(
            content_type.starts_with("application/grpc"),
            "{content_type}"
        );
    }
    let spans = grpc_spans(&got);
    assert!(
        spans
            .iter()
            .all(|(service, _)| service == "shadowcat-over-grpc"),
        "{spans:?}"
    );
    // The session span closes at shutdown and is flushed before the process exits.
    assert!(spans.iter().any(|(_, name)| name == "session"), "{spans:?}");
}

/// What the fake HTTP upstream saw of each `tools/call`: its `traceparent` header and the
/// `traceparent` in its `params._meta`.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

async fn fake_upstream() -> (String, Seen) {
    async fn post(
        State(seen): State<Seen>,
        headers: axum::http::HeaderMap,
        body: String,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let Some(id) = v.get("id").cloned() else {
            return axum::http::StatusCode::ACCEPTED.into_response();
        };
        let result = match v["method"].as_str() {
            Some("initialize") => {
                json!({"protocolVersion":"2025-06-18","capabilities":{"tools":{}},
                "serverInfo":{"name":"fake","version":"1"}})
            }
            Some("tools/call") => {
                seen.lock().unwrap().push((
                    headers
                        .get("traceparent")
                        .map(|h| h.to_str().unwrap().to_owned()),
                    v["params"]["_meta"]["traceparent"]
                        .as_str()
                        .map(str::to_owned),
                ));
                json!({"content":[{"type":"text","text":"ok"}]})
            }
            _ => json!({}),
        };
        (
            [("content-type", "application/json")],
            json!({"jsonrpc":"2.0","id":id,"result":result}).to_string(),
        )
            .into_response()
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/mcp", axum::routing::post(post))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/mcp"), seen)
}

/// A stdio MCP server (Python, standard library only) whose one tool answers with the
/// `traceparent` it found in the request's `params._meta`.
const META_SERVER: &str = r#"
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    if m["method"] == "initialize":
        r = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
             "serverInfo": {"name": "meta", "version": "1"}}
    elif m["method"] == "tools/call":
        tp = m.get("params", {}).get("_meta", {}).get("traceparent", "")
        r = {"content": [{"type": "text", "text": tp}]}
    else:
        r = {}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;

/// The span id of a `traceparent`.
fn span_of(tp: &str) -> &str {
    &tp[36..52]
}

async fn span_named(bodies: &Bodies, name: &str, trace: &str) -> Span {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = spans(bodies)
            .into_iter()
            .find(|s| s.name == name && s.trace_id == trace)
        {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{name}` span in trace {trace}; got {:?}",
            spans(bodies)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_clients_trace_continues_through_the_proxy_to_http_and_stdio_upstreams() {
    let (endpoint, bodies) = collector().await;
    let (http_url, seen) = fake_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("meta_server.py");
    std::fs::write(&script, META_SERVER).unwrap();
    let stdio_target = format!("stdio=python3 {}", script.display());
    let http_target = format!("http={http_url}");
    let p = Server::start_with_env(
        &[
            "forward",
            "http",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &http_target,
            "--target",
            &stdio_target,
            "--log-level",
            "warn",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;

    // 1. Over HTTP headers, to an HTTP upstream: the trace goes on as a header and in `_meta`.
    let trace_a = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_a = format!("00-{trace_a}-00f067aa0ba902b7-01");
    let mut c = Raw::new(format!("{}/servers/http/mcp", p.base));
    c.initialize().await;
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"echo","arguments":{}}});
    let r = Raw::send(
        c.post_builder(call.to_string())
            .header("traceparent", &client_a)
            .header("tracestate", "vendor=a"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (header, meta) = seen.lock().unwrap().last().cloned().unwrap();
    let (header, meta) = (header.expect("traceparent header"), meta.expect("_meta"));
    assert_eq!(header, meta);
    assert_eq!(&header[3..35], trace_a, "same trace: {header}");
    assert_ne!(
        span_of(&header),
        span_of(&client_a),
        "the proxy's span is the parent"
    );
    let mcp = span_named(&bodies, "tools/call echo", trace_a).await;
    assert_eq!(
        mcp.span_id,
        span_of(&header),
        "the upstream's parent is the MCP span"
    );
    assert_eq!(mcp.attrs["mcp.method.name"], "tools/call");
    assert_eq!(mcp.attrs["gen_ai.tool.name"], "echo");
    assert_eq!(mcp.attrs["jsonrpc.request.id"], "1");
    assert_eq!(mcp.attrs["mcp.session.id"], c.session.clone().unwrap());
    assert_eq!(mcp.attrs["network.transport"], "tcp");
    let request = span_named(&bodies, "request", trace_a).await;
    assert_eq!(
        mcp.parent, request.span_id,
        "inside the HTTP request's span"
    );
    assert_eq!(
        request.parent,
        span_of(&client_a),
        "which continues the client's"
    );

    // 2. In `_meta` (as a stdio client would send it), to a stdio upstream.
    let trace_b = "0af7651916cd43dd8448eb211c80319c";
    let client_b = format!("00-{trace_b}-b7ad6b7169203331-01");
    let mut s = Raw::new(format!("{}/servers/stdio/mcp", p.base));
    s.initialize().await;
    let r = s
        .post(json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
            "params":{"name":"meta","arguments":{},"_meta":{"traceparent": client_b}}}))
        .await;
    let got = r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        &got[3..35],
        trace_b,
        "the stdio server got the trace: {}",
        r.body
    );
    assert_ne!(span_of(&got), span_of(&client_b));
    let mcp = span_named(&bodies, "tools/call meta", trace_b).await;
    assert_eq!(mcp.span_id, span_of(&got));
    assert_eq!(
        mcp.parent,
        span_of(&client_b),
        "the message's own context is the parent"
    );

    // 3. A malformed traceparent is not passed on.
    let r = Raw::send(
        c.post_builder(
            json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
                "params":{"name":"echo","arguments":{}}})
            .to_string(),
        )
        .header("traceparent", "00-zz-junk"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (header, _) = seen.lock().unwrap().last().cloned().unwrap();
    let header = header.expect("the proxy's own trace still goes on");
    assert!(!header.contains("zz"), "{header}");
    p.terminate().await;
}
