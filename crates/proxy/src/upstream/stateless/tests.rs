//! The stateless mode's planning and answers, without a server.

use super::*;

fn frame(v: Value) -> Frame {
    frame_of(v)
}

fn posted(p: Plan) -> Outgoing {
    match p {
        Plan::Post(o) => o,
        _ => panic!("expected a POST"),
    }
}

fn header<'a>(o: &'a Outgoing, name: &str) -> Option<&'a str> {
    o.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn initialize_becomes_discover_and_its_answer_an_initialize_result() {
    let st = Stateless::default();
    let init = frame(
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{"roots":{}},"clientInfo":{"name":"c","version":"1"}}}),
    );
    let o = posted(st.plan(&init));
    assert_eq!(header(&o, "mcp-method"), Some("server/discover"));
    assert_eq!(header(&o, "mcp-protocol-version"), Some("2026-07-28"));
    let body: Value = serde_json::from_slice(&o.body).unwrap();
    assert_eq!(body["method"], "server/discover");
    assert_eq!(body["id"], 0);
    assert_eq!(
        body["params"]["_meta"]["io.modelcontextprotocol/clientInfo"]["name"],
        "c"
    );
    let answer = frame(
        json!({"jsonrpc":"2.0","id":0,"result":{"supportedVersions":["2026-07-28"],
        "capabilities":{"tools":{"listChanged":true},"resources":{"subscribe":true}},
        "resultType":"complete","_meta":{"io.modelcontextprotocol/serverInfo":{"name":"m","version":"2"}}}}),
    );
    let r: Value = serde_json::from_slice(st.to_client(answer)[0].raw()).unwrap();
    assert_eq!(r["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(r["result"]["serverInfo"]["name"], "m");
    // the initialized notification is absorbed; ping is answered locally
    let n = frame(json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
    assert!(matches!(st.plan(&n), Plan::Absorb));
    let p = frame(json!({"jsonrpc":"2.0","id":1,"method":"ping"}));
    assert!(matches!(st.plan(&p), Plan::Answer { .. }));
    // subscriptions feed the listen request
    let s = frame(
        json!({"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"demo://a"}}),
    );
    assert!(matches!(
        st.plan(&s),
        Plan::Answer {
            relisten: false,
            ..
        }
    ));
    let l = st.listen_request().unwrap();
    let body: Value = serde_json::from_slice(&l.body).unwrap();
    assert_eq!(
        body["params"]["notifications"],
        json!({"toolsListChanged": true, "resourceSubscriptions": ["demo://a"]})
    );
    let ack = frame(
        json!({"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{}}),
    );
    assert!(st.to_client(ack).is_empty());
    let end = frame(json!({"jsonrpc":"2.0","id":body["id"],"result":{"resultType":"complete"}}));
    assert!(st.to_client(end).is_empty());
}

#[test]
fn requests_carry_headers_and_answers_lose_modern_fields() {
    let st = Stateless::default();
    st.state().client.log_level = Some("info".into());
    let list = frame(json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}));
    let o = posted(st.plan(&list));
    let body: Value = serde_json::from_slice(&o.body).unwrap();
    assert_eq!(
        body["params"]["_meta"]["io.modelcontextprotocol/logLevel"],
        "info"
    );
    let tools = frame(
        json!({"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"t","inputSchema":{
        "type":"object","properties":{"region":{"type":"string","x-mcp-header":"Region"},
        "n":{"type":"object","properties":{"deep":{"type":"integer","x-mcp-header":"Deep"}}}}}}],
        "resultType":"complete","ttlMs":0,"cacheScope":"private"}}),
    );
    let r: Value = serde_json::from_slice(st.to_client(tools)[0].raw()).unwrap();
    assert!(r["result"].get("resultType").is_none() && r["result"].get("ttlMs").is_none());
    let call = frame(
        json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"t",
        "arguments":{"region":"eu wést","n":{"deep":7}}}}),
    );
    let o = posted(st.plan(&call));
    assert_eq!(header(&o, "mcp-name"), Some("t"));
    assert_eq!(
        header(&o, "mcp-param-Region").map(|v| header_value::decode(v.as_bytes())),
        Some(Some("eu wést".to_string()))
    );
    assert_eq!(header(&o, "mcp-param-Deep"), Some("7"));
    // a multi-round-trip result without questions is refused in words; with questions, they
    // are asked, and the answers make a retry
    let ir = frame(
        json!({"jsonrpc":"2.0","id":4,"result":{"resultType":"input_required","requestState":"x"}}),
    );
    let e = st.to_client(ir);
    assert_eq!(e[0].kind(), FrameKind::Error);
    let call = frame(json!({"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"t"}}));
    let _ = posted(st.plan(&call));
    let ir = frame(
        json!({"jsonrpc":"2.0","id":8,"result":{"resultType":"input_required",
        "inputRequests":{"q":{"method":"elicitation/create","params":{"message":"?"}}}}}),
    );
    let asks = st.to_client(ir);
    assert_eq!(asks[0].method(), Some("elicitation/create"));
    let answer = frame(
        json!({"jsonrpc":"2.0","id": envelope::id_value(asks[0].id().unwrap()),
        "result":{"action":"decline"}}),
    );
    let retry = posted(st.plan(&answer));
    let body: Value = serde_json::from_slice(&retry.body).unwrap();
    assert_eq!(body["id"], 8);
    assert_eq!(body["params"]["inputResponses"]["q"]["action"], "decline");
    assert_eq!(header(&retry, "mcp-name"), Some("t"));
    // cancellation closes the POST
    let call = frame(json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"t"}}));
    let o = posted(st.plan(&call));
    let c =
        frame(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}));
    assert!(matches!(st.plan(&c), Plan::Absorb));
    assert!(o.cancel.is_cancelled());
    // subscriptions need the capability
    let s =
        frame(json!({"jsonrpc":"2.0","id":6,"method":"resources/subscribe","params":{"uri":"x"}}));
    match st.plan(&s) {
        Plan::Answer { frame, .. } => assert_eq!(frame.kind(), FrameKind::Error),
        _ => panic!("expected an answer"),
    }
}
