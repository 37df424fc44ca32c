//! Secrets stay where they belong: upstream credentials never reach `/metrics`, the client's
//! errors or the log; `/metrics` can require a token; stdio children do not inherit the
//! proxy's secrets.

use super::gateway_support::{config_file, get, sample, start_gateway};
use super::harness::{Launch, Raw, Server, bin, free_port, init_body};

/// In every secret below: none of the proxy's output may contain it.
const MARK: &str = "s3cr3t";

#[tokio::test]
async fn upstream_secrets_reach_neither_metrics_nor_client_errors_nor_the_log() {
    let dead = |p: u16| format!("http://user:pw-{MARK}@127.0.0.1:{p}/mcp?api_key=QK-{MARK}&v=1");
    let (one, two, three) = (free_port(), free_port(), free_port());
    let (_d, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[metrics]
token_env = "METRICS_TOKEN"
[[routes]]
path = "/mcp"
[[routes.upstreams]]
url = "{a}"
[[routes.upstreams]]
url = "{b}"
[[routes]]
path = "/servers/one/mcp"
[[routes.upstreams]]
url = "{c}"
[[routes]]
path = "/servers/cmd/mcp"
[[routes.upstreams]]
command = "/bin/sh"
args = ["-c", "exit 3", "sh", "--token", "ARG-{MARK}"]
"#,
        a = dead(one),
        b = dead(two),
        c = dead(three),
    ));
    // Its stderr (the log) is kept; at debug level.
    let mut gw = Launch::shadowcat(&["--log-level", "debug", "gateway", "--config", &cfg])
        .env("METRICS_TOKEN", "metrics-tok")
        .serve()
        .await;

    // Clients get errors that name the upstream without its credentials.
    for (path, label) in [
        ("/mcp", "/mcp?api_key&v".to_string()),
        (
            "/servers/one/mcp",
            format!("http://127.0.0.1:{three}/mcp?api_key&v"),
        ),
    ] {
        let r = Raw::new(format!("{}{path}", gw.base))
            .post(init_body(0, "2025-06-18"))
            .await;
        assert!(r.body.contains("\"error\""), "{path}: {}", r.body);
        assert!(r.body.contains(&label), "{path}: {label} not in {}", r.body);
        assert!(!r.body.contains(MARK), "{path}: {}", r.body);
    }
    let r = Raw::new(format!("{}/servers/cmd/mcp", gw.base))
        .post(init_body(0, "2025-06-18"))
        .await;
    assert!(r.body.contains("\"error\""), "{}", r.body);
    assert!(!r.body.contains(MARK), "{}", r.body);

    // /metrics wants its token; with it, upstreams are named without secrets.
    let scrape = |token: &'static str| {
        reqwest::Client::new()
            .get(format!("{}/metrics", gw.base))
            .bearer_auth(token)
            .send()
    };
    for token in ["", "wrong", "metrics-to"] {
        let r = scrape(token).await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{token:?}");
        assert!(r.headers().contains_key("www-authenticate"));
    }
    let (status, _, body) = get(&gw.base, "/metrics").await;
    assert_eq!(status, 401, "no header at all: {body}");
    let r = scrape("metrics-tok").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let metrics = r.text().await.unwrap();
    assert!(!metrics.contains(MARK), "{metrics}");
    let up = |route: &str, name: &str| {
        sample(
            &metrics,
            &format!("shadowcat_upstream_up{{route=\"{route}\",upstream=\"{name}\"}}"),
        )
    };
    assert!(
        up("/mcp", &format!("http://127.0.0.1:{one}/mcp?api_key&v")).is_some(),
        "{metrics}"
    );
    assert!(up("/servers/cmd/mcp", "sh").is_some(), "{metrics}");

    // The log of all this (debug level), once the gateway has exited.
    gw.process.terminate().await;
    let text = gw.full_log().await.join("\n");
    assert!(
        text.contains(&format!("http://127.0.0.1:{three}/mcp?api_key&v")),
        "the log names the upstream: {text}"
    );
    assert!(!text.contains(MARK), "{text}");
}

/// Sessions of `url` get the upstream `sh -c 'env > FILE; exec shadowcat demo-server'`.
fn env_dumper(file: &std::path::Path) -> [String; 4] {
    [
        "-c".into(),
        "env > \"$0\"; exec \"$1\" demo-server".into(),
        file.to_string_lossy().into_owned(),
        bin().into(),
    ]
}

fn dumped(file: &std::path::Path) -> String {
    std::fs::read_to_string(file).expect("the child wrote its environment")
}

#[tokio::test]
async fn gateway_children_start_from_a_minimal_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env.txt");
    let args: Vec<String> = env_dumper(&file).iter().map(|a| format!("{a:?}")).collect();
    let (_d, cfg) = config_file(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[routes]]
path = "/mcp"
[[routes.upstreams]]
command = "/bin/sh"
args = [{args}]
env = {{ MODE = "prod" }}
env_passthrough = ["PASS_ME"]
[[routes]]
path = "/servers/http/mcp"
[[routes.upstreams]]
url = "http://127.0.0.1:{port}/mcp"
bearer_env = "UP_TOKEN"
"#,
        args = args.join(", "),
        port = free_port(),
    ));
    let gw = start_gateway(
        &["--config", &cfg],
        &[
            ("SHADOWCAT_ADMIN_TOKEN", &format!("admin-{MARK}")),
            ("UP_TOKEN", &format!("bearer-{MARK}")),
            ("PASS_ME", "yes"),
            ("NOT_PASSED", "no"),
        ],
    )
    .await;
    let mut c = Raw::new(gw.url());
    c.initialize().await;
    let env = dumped(&file);
    assert!(!env.contains(MARK), "{env}");
    let lines: Vec<&str> = env.lines().collect();
    for want in ["MODE=prod", "PASS_ME=yes"] {
        assert!(lines.contains(&want), "{want} missing in:\n{env}");
    }
    assert!(lines.iter().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(!env.contains("NOT_PASSED"), "{env}");
}

#[tokio::test]
async fn forward_children_inherit_the_users_environment_without_shadowcats() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env.txt");
    let [a, b, c, d] = env_dumper(&file);
    let fwd = Server::start_with_env(
        &[
            "forward",
            "http",
            "--listen",
            "127.0.0.1:0",
            "--",
            "/bin/sh",
            &a,
            &b,
            &c,
            &d,
        ],
        &[
            ("SHADOWCAT_ADMIN_TOKEN", &format!("admin-{MARK}")),
            ("USER_VAR", "kept"),
        ],
    )
    .await;
    let mut client = Raw::new(fwd.url());
    client.initialize().await;
    let env = dumped(&file);
    assert!(env.lines().any(|l| l == "USER_VAR=kept"), "{env}");
    assert!(!env.contains(MARK), "{env}");
    assert!(!env.contains("SHADOWCAT_"), "{env}");
}
