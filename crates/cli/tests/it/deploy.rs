//! The deployment files — `Dockerfile`, `deploy/compose.yaml`, `deploy/kubernetes/`,
//! `deploy/systemd/shadowcat.service` — checked against the real binary. Docker, Compose,
//! Kubernetes and systemd are not run here; what is checked without them:
//! - every YAML file under `deploy/` parses (every document);
//! - every gateway configuration they embed or copy passes `shadowcat config check`, given only
//!   the environment variables the file gives the gateway;
//! - every flag of every `shadowcat` command line is in that subcommand's `--help`, and every
//!   `SHADOWCAT_*` variable they set is one the binary (`[env: …]`) or the configuration reads;
//! - probes and health checks aim at the port the configuration listens on (or the one
//!   `demo-server --http` serves), with the paths a gateway started from that same configuration
//!   answers (`/health` 200, `/ready` its readiness JSON);
//! - published ports, `--config` paths and mounts, upstream and store host names, Service
//!   targets, the PodDisruptionBudget and the HorizontalPodAutoscaler agree with each other;
//! - the time each gets between SIGTERM and SIGKILL covers the gateway's longest shutdown
//!   (2 x `shutdown_deadline` + 2 x `shutdown_grace`, after any preStop pause).

use super::gateway_support::{config_file, gateway, get, run};
use super::harness::bin;
use serde::Deserialize;
use serde_norway::Value;
use shadowcat_gateway::GatewayConfig;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How one of the files runs `shadowcat`.
#[derive(Debug, Default)]
struct Run {
    /// Where: "Dockerfile", "deploy/compose.yaml: service gateway-1", …
    what: String,
    /// The arguments after the binary.
    argv: Vec<String>,
    /// The gateway configuration `--config` names, when the file provides it.
    config: Option<String>,
    /// Environment variables it sets: name → value (`None`: from a Secret).
    env: BTreeMap<String, Option<String>>,
    /// HTTP probes aimed at it: (port, path).
    probes: Vec<(u16, String)>,
    /// Container ports it publishes or declares.
    ports: Vec<u16>,
    /// Time between SIGTERM and SIGKILL, once any preStop pause is over.
    stop_allowance: Option<Duration>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document under `deploy/` (merge keys applied), with its file.
fn yaml_documents() -> Vec<(String, Value)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("deploy"), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let name = f
            .strip_prefix(repo())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        for de in serde_norway::Deserializer::from_str(&text) {
            let mut v = Value::deserialize(de).unwrap_or_else(|e| panic!("{name}: {e}"));
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{name}: merge keys: {e}"));
            if !v.is_null() {
                docs.push((name.clone(), v));
            }
        }
    }
    docs
}

/// `v[k1][k2]…`, `Null` where missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    static NULL: Value = Value::Null;
    path.iter().try_fold(v, |v, k| v.get(*k)).unwrap_or(&NULL)
}

fn text(v: &Value, what: &str) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
        .to_string()
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(|s| s.as_slice()).unwrap_or_default()
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    seq(v).iter().map(|s| text(s, what)).collect()
}

/// The value after `flag` (`--flag VALUE` or `--flag=VALUE`).
fn flag_value(argv: &[String], flag: &str) -> Option<String> {
    argv.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            argv.get(i + 1).cloned()
        } else {
            a.strip_prefix(flag)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_string)
        }
    })
}

/// (port, path) of an `http://HOST:PORT/PATH` URL.
fn port_and_path(url: &str) -> (String, u16, String) {
    let u = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    let port = u
        .port_or_known_default()
        .unwrap_or_else(|| panic!("{url}: no port"));
    (
        u.host_str().unwrap_or_default().to_string(),
        port,
        u.path().to_string(),
    )
}

/// The port of `ADDR` (`0.0.0.0:9000`).
fn addr_port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("`{addr}` has no port"))
}

/// The URL among a health check command's arguments.
fn probe_of(cmd: &[String], what: &str) -> (u16, String) {
    let url = cmd
        .iter()
        .find(|a| a.starts_with("http://"))
        .unwrap_or_else(|| panic!("{what}: no http:// URL in {cmd:?}"));
    let (_, port, path) = port_and_path(url);
    (port, path)
}

/// `30s`, `1m30s`, `30` (seconds).
fn duration(s: &str, what: &str) -> Duration {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Duration::from_secs(n);
    }
    let (mut total, mut num) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .unwrap_or_else(|_| panic!("{what}: `{s}` is no duration"));
        num.clear();
        total += match c {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            _ => panic!("{what}: `{s}` is no duration"),
        };
    }
    assert!(num.is_empty(), "{what}: `{s}` is no duration");
    Duration::from_secs(total)
}

// ---------------------------------------------------------------------------------------------
// The files
// ---------------------------------------------------------------------------------------------

/// The Dockerfile's instructions (continuation lines joined, comments dropped).
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile").replace("\\\n", " ");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (op, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (op.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect()
}

fn json_argv(s: &str, what: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{what}: exec form expected ({e}): {s}"))
}

/// The image: its command line, default configuration, HEALTHCHECK and EXPOSEd ports.
fn image() -> Run {
    let ins = dockerfile();
    let last = |op: &str| {
        ins.iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("Dockerfile: no {op}"))
    };
    let entry = json_argv(&last("ENTRYPOINT"), "ENTRYPOINT");
    assert_eq!(entry, ["shadowcat"], "the image's ENTRYPOINT is the binary");
    let argv = json_argv(&last("CMD"), "CMD");
    let health = last("HEALTHCHECK");
    let cmd = health
        .split_once("CMD ")
        .map(|(_, c)| json_argv(c, "HEALTHCHECK CMD"))
        .expect("HEALTHCHECK … CMD [\"curl\", …]");
    let config_path = flag_value(&argv, "--config").expect("CMD gives --config");
    // The file copied to that path (in the final stage: COPY without --from).
    let config = ins
        .iter()
        .filter(|(o, r)| o == "COPY" && !r.starts_with("--from"))
        .find_map(|(_, r)| {
            let parts: Vec<&str> = r.split_whitespace().collect();
            (parts.len() == 2 && parts[1] == config_path).then(|| read(parts[0]))
        })
        .unwrap_or_else(|| panic!("Dockerfile: nothing is copied to {config_path}"));
    let ports = ins
        .iter()
        .filter(|(o, _)| o == "EXPOSE")
        .flat_map(|(_, r)| r.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    Run {
        what: "Dockerfile".into(),
        argv,
        config: Some(config),
        probes: vec![probe_of(&cmd, "Dockerfile HEALTHCHECK")],
        ports,
        ..Run::default()
    }
}

/// The compose file's `shadowcat` services, and the names of all its services with the ports
/// they serve (`demo-server --http` ports; the image's default port for the others).
fn compose(docs: &[(String, Value)], image: &Run) -> (Vec<Run>, HashMap<String, Vec<u16>>) {
    let (file, doc) = docs
        .iter()
        .find(|(f, _)| f == "deploy/compose.yaml")
        .expect("deploy/compose.yaml");
    let mut runs = Vec::new();
    let mut served = HashMap::new();
    let services = at(doc, &["services"]).as_mapping().expect("services");
    for (name, svc) in services {
        let name = text(name, "service name");
        let what = format!("{file}: service {name}");
        let img = text(at(svc, &["image"]), &what);
        if !img.starts_with("shadowcat") {
            // Another image (redis): known by name, its port from its image.
            served.insert(name, vec![]);
            continue;
        }
        let argv = strings(at(svc, &["command"]), &what);
        let mut run = Run {
            what: what.clone(),
            argv,
            ..Run::default()
        };
        // The image's HEALTHCHECK unless the service has its own.
        run.probes = match at(svc, &["healthcheck", "test"]) {
            Value::Null => image.probes.clone(),
            t => vec![probe_of(&strings(t, &what)[1..], &what)],
        };
        for p in seq(at(svc, &["ports"])) {
            let p = text(p, &what);
            let container = p.rsplit(':').next().unwrap();
            run.ports.push(container.parse().unwrap());
        }
        match at(svc, &["environment"]) {
            Value::Mapping(m) => {
                for (k, v) in m {
                    run.env
                        .insert(text(k, &what), v.as_str().map(str::to_string));
                }
            }
            Value::Sequence(s) => {
                for kv in s {
                    let kv = text(kv, &what);
                    let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                    run.env.insert(k.into(), Some(v.into()));
                }
            }
            _ => {}
        }
        if let Some(g) = at(svc, &["stop_grace_period"]).as_str() {
            run.stop_allowance = Some(duration(g, &what));
        }
        if let Some(path) = flag_value(&run.argv, "--config") {
            let source = seq(at(svc, &["configs"]))
                .iter()
                .find(|c| at(c, &["target"]).as_str() == Some(path.as_str()))
                .map(|c| text(at(c, &["source"]), &what))
                .unwrap_or_else(|| panic!("{what}: no config is mounted at {path}"));
            run.config = Some(text(
                at(doc, &["configs", source.as_str(), "content"]),
                &format!("{file}: configs.{source}.content"),
            ));
        }
        let port = flag_value(&run.argv, "--http").map(|a| addr_port(&a));
        served.insert(name, port.into_iter().collect());
        runs.push(run);
    }
    (runs, served)
}

/// The Kubernetes manifests' `shadowcat` containers, and the Services (name → port → the
/// container port it targets).
fn kubernetes(docs: &[(String, Value)]) -> (Vec<Run>, HashMap<String, HashMap<u16, u16>>) {
    let k8s: Vec<&(String, Value)> = docs
        .iter()
        .filter(|(f, _)| f.starts_with("deploy/kubernetes/"))
        .collect();
    let kind = |k: &str| -> Vec<&(String, Value)> {
        k8s.iter()
            .copied()
            .filter(|(_, d)| at(d, &["kind"]).as_str() == Some(k))
            .collect()
    };
    let name_of = |d: &Value| text(at(d, &["metadata", "name"]), "metadata.name");
    let config_maps: HashMap<String, &Value> = kind("ConfigMap")
        .into_iter()
        .map(|(_, d)| (name_of(d), at(d, &["data"])))
        .collect();
    let deployments = kind("Deployment");
    assert!(
        !deployments.is_empty(),
        "no Deployment under deploy/kubernetes/"
    );
    let mut runs = Vec::new();
    // Deployment → (template labels, container port names → numbers).
    let mut pods: Vec<(String, &Value, HashMap<String, u16>)> = Vec::new();
    for (file, d) in &deployments {
        let dname = name_of(d);
        let spec = at(d, &["spec", "template", "spec"]);
        let labels = at(d, &["spec", "template", "metadata", "labels"]);
        let selector = at(d, &["spec", "selector", "matchLabels"]);
        assert!(
            selects(selector, labels),
            "{file}: Deployment {dname}: its selector does not match its pods"
        );
        let mut named = HashMap::new();
        for c in seq(at(spec, &["containers"])) {
            let what = format!(
                "{file}: Deployment {dname}, container {}",
                text(at(c, &["name"]), "name")
            );
            let mut run = Run {
                what: what.clone(),
                ..Run::default()
            };
            for p in seq(at(c, &["ports"])) {
                let n = at(p, &["containerPort"]).as_u64().expect("containerPort") as u16;
                run.ports.push(n);
                if let Some(pn) = at(p, &["name"]).as_str() {
                    named.insert(pn.to_string(), n);
                }
            }
            if !text(at(c, &["image"]), &what).starts_with("shadowcat") {
                continue;
            }
            // The image's ENTRYPOINT is the binary; `command` would replace it.
            run.argv = match at(c, &["command"]) {
                Value::Null => strings(at(c, &["args"]), &what),
                cmd => {
                    let mut argv = strings(cmd, &what);
                    assert!(argv[0].ends_with("shadowcat"), "{what}: command {argv:?}");
                    argv.remove(0);
                    argv.extend(strings(at(c, &["args"]), &what));
                    argv
                }
            };
            for e in seq(at(c, &["env"])) {
                run.env.insert(
                    text(at(e, &["name"]), &what),
                    at(e, &["value"]).as_str().map(str::to_string),
                );
            }
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                let get = at(c, &[probe, "httpGet"]);
                if get.is_null() {
                    continue;
                }
                let port = match at(get, &["port"]) {
                    Value::String(n) => *named
                        .get(n)
                        .unwrap_or_else(|| panic!("{what}: {probe} port `{n}` is not declared")),
                    p => p.as_u64().expect("port") as u16,
                };
                run.probes.push((port, text(at(get, &["path"]), &what)));
            }
            if let Some(path) = flag_value(&run.argv, "--config") {
                run.config = Some(mounted_config(spec, c, &path, &config_maps, &what));
                // A gateway: readiness on /ready, liveness on /health.
                let path_of = |p: &str| at(c, &[p, "httpGet", "path"]).as_str();
                assert_eq!(path_of("readinessProbe"), Some("/ready"), "{what}");
                assert_eq!(path_of("livenessProbe"), Some("/health"), "{what}");
            }
            let grace = at(spec, &["terminationGracePeriodSeconds"])
                .as_u64()
                .unwrap_or(30);
            let pause = match strings(at(c, &["lifecycle", "preStop", "exec", "command"]), &what)
                .as_slice()
            {
                [] => 0,
                [sleep, n] if sleep == "sleep" => n.parse().expect("sleep seconds"),
                other => panic!("{what}: preStop {other:?}: only `sleep N` is understood here"),
            };
            assert!(
                grace > pause,
                "{what}: the preStop pause takes all the grace"
            );
            run.stop_allowance = Some(Duration::from_secs(grace - pause));
            runs.push(run);
        }
        pods.push((dname, labels, named));
    }
    // Services: each selects a Deployment's pods, and its targetPort is one of theirs.
    let mut services = HashMap::new();
    for (file, s) in kind("Service") {
        let sname = name_of(s);
        let selector = at(s, &["spec", "selector"]);
        let (_, _, named) = pods
            .iter()
            .find(|(_, labels, _)| selects(selector, labels))
            .unwrap_or_else(|| panic!("{file}: Service {sname} selects no Deployment's pods"));
        let mut ports = HashMap::new();
        for p in seq(at(s, &["spec", "ports"])) {
            let port = at(p, &["port"]).as_u64().expect("port") as u16;
            let target = match at(p, &["targetPort"]) {
                Value::Null => port,
                Value::String(n) => *named.get(n).unwrap_or_else(|| {
                    panic!("{file}: Service {sname}: targetPort `{n}` is no container port")
                }),
                t => t.as_u64().expect("targetPort") as u16,
            };
            assert!(
                named.values().any(|&p| p == target),
                "{file}: Service {sname}: no container declares port {target}"
            );
            ports.insert(port, target);
        }
        services.insert(sname, ports);
    }
    // The PodDisruptionBudget and the HorizontalPodAutoscaler are about the gateway.
    let gateway = pods
        .iter()
        .find(|(n, _, _)| {
            runs.iter()
                .any(|r| r.config.is_some() && r.what.contains(&format!("Deployment {n},")))
        })
        .expect("a Deployment runs the gateway");
    let pdbs = kind("PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1, "one PodDisruptionBudget");
    let (file, pdb) = pdbs[0];
    assert!(
        selects(at(pdb, &["spec", "selector", "matchLabels"]), gateway.1),
        "{file}: the PodDisruptionBudget does not select the gateway's pods"
    );
    let min_available = at(pdb, &["spec", "minAvailable"])
        .as_u64()
        .expect("minAvailable");
    let hpas = kind("HorizontalPodAutoscaler");
    assert_eq!(hpas.len(), 1, "one HorizontalPodAutoscaler");
    let (file, hpa) = hpas[0];
    assert_eq!(
        at(hpa, &["spec", "scaleTargetRef", "kind"]).as_str(),
        Some("Deployment"),
        "{file}"
    );
    assert_eq!(
        text(at(hpa, &["spec", "scaleTargetRef", "name"]), file),
        gateway.0,
        "{file}: the HorizontalPodAutoscaler scales another Deployment"
    );
    let min_replicas = at(hpa, &["spec", "minReplicas"])
        .as_u64()
        .expect("minReplicas");
    assert!(
        min_replicas > min_available,
        "{file}: minReplicas {min_replicas} with minAvailable {min_available}: no pod could ever be evicted (node drains block)"
    );
    (runs, services)
}

/// Whether `selector` (label → value) matches `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_mapping().expect("a selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The ConfigMap key mounted at `path` in container `c`.
fn mounted_config(
    spec: &Value,
    c: &Value,
    path: &str,
    config_maps: &HashMap<String, &Value>,
    what: &str,
) -> String {
    for m in seq(at(c, &["volumeMounts"])) {
        let dir = text(at(m, &["mountPath"]), what);
        let Some(key) = path
            .strip_prefix(dir.trim_end_matches('/'))
            .and_then(|k| k.strip_prefix('/'))
        else {
            continue;
        };
        let vname = text(at(m, &["name"]), what);
        let volume = seq(at(spec, &["volumes"]))
            .iter()
            .find(|v| at(v, &["name"]).as_str() == Some(vname.as_str()))
            .unwrap_or_else(|| panic!("{what}: no volume {vname}"));
        let cm = text(at(volume, &["configMap", "name"]), what);
        let data = config_maps
            .get(&cm)
            .unwrap_or_else(|| panic!("{what}: no ConfigMap {cm}"));
        return text(at(data, &[key]), &format!("ConfigMap {cm}: data.{key}"));
    }
    panic!("{what}: nothing is mounted at {path}")
}

/// The systemd unit's command line and stop timeout.
fn systemd() -> Run {
    let what = "deploy/systemd/shadowcat.service";
    let unit = read(what);
    let key = |k: &str| {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(k)?.strip_prefix('='))
            .map(str::trim)
            .next_back()
            .map(str::to_string)
    };
    let exec = key("ExecStart").expect("ExecStart");
    let mut argv: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    assert!(argv[0].ends_with("/shadowcat"), "{what}: ExecStart={exec}");
    argv.remove(0);
    let mut env = BTreeMap::new();
    for l in unit.lines() {
        if let Some(kv) = l.trim().strip_prefix("Environment=") {
            let (k, v) = kv.split_once('=').expect("Environment=NAME=VALUE");
            env.insert(k.to_string(), Some(v.to_string()));
        }
    }
    Run {
        what: what.into(),
        argv,
        env,
        stop_allowance: Some(duration(
            &key("TimeoutStopSec").expect("TimeoutStopSec"),
            what,
        )),
        ..Run::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

/// Whether `help` documents `flag` (`--config`, or `-c`) as a whole word.
fn has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        matches!(before, None | Some(' ' | ',' | '\n'))
            && matches!(after, None | Some(' ' | ',' | '\n' | '=' | '['))
    })
}

/// The subcommand words of `argv` (before the first option) and their `--help`.
async fn help_of(argv: &[String], what: &str, cache: &mut HashMap<String, String>) -> String {
    let words: Vec<&str> = argv
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    assert!(!words.is_empty(), "{what}: no subcommand in {argv:?}");
    let key = words.join(" ");
    if let Some(h) = cache.get(&key) {
        return h.clone();
    }
    let mut args = words.clone();
    args.push("--help");
    let (code, out, err) = run(&args, &[]).await;
    assert_eq!(code, 0, "{what}: `shadowcat {key}` is no subcommand: {err}");
    cache.insert(key, out.clone());
    out
}

/// The configuration file's values that matter here.
fn parse_config(toml_text: &str, what: &str) -> GatewayConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The longest a gateway with `cfg` takes from SIGTERM to exit: in-flight requests, then the
/// sessions' stdio children (stdin closed, then SIGTERM, each step its grace), then connections.
fn longest_shutdown(cfg: &GatewayConfig) -> Duration {
    2 * cfg.server.shutdown_deadline.0 + 2 * cfg.server.shutdown_grace.0
}

/// The environment a run gives the gateway, Secrets filled with a stand-in.
fn env_of(run: &Run) -> Vec<(String, String)> {
    run.env
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.clone().unwrap_or_else(|| "from-a-secret".into()),
            )
        })
        .collect()
}

#[tokio::test]
async fn deployment_files_agree_with_the_binary() {
    // The checker itself: a misspelt flag is not in the help.
    let mut helps = HashMap::new();
    let gw_help = help_of(&["gateway".into()], "self-check", &mut helps).await;
    assert!(has_flag(&gw_help, "--config") && has_flag(&gw_help, "-c"));
    assert!(!has_flag(&gw_help, "--confi") && !has_flag(&gw_help, "--configs"));

    let docs = yaml_documents();
    assert!(
        docs.len() >= 8,
        "YAML documents under deploy/: {}",
        docs.len()
    );
    let image = image();
    let (compose_runs, compose_services) = compose(&docs, &image);
    let (k8s_runs, k8s_services) = kubernetes(&docs);
    let unit = systemd();
    let mut runs = vec![image, unit];
    runs.extend(compose_runs);
    runs.extend(k8s_runs);
    let mut gateways = 0;

    for r in &runs {
        let what = &r.what;
        // Every flag is in the subcommand's --help.
        let help = help_of(&r.argv, what, &mut helps).await;
        for a in r.argv.iter().take_while(|a| *a != "--") {
            if a.starts_with('-') {
                let flag = a.split('=').next().unwrap();
                assert!(
                    has_flag(&help, flag),
                    "{what}: `{flag}` is not an option of `shadowcat {}`",
                    r.argv[0]
                );
            }
        }
        // Every SHADOWCAT_* variable set is read by the binary or named by the configuration.
        for name in r.env.keys().filter(|k| k.starts_with("SHADOWCAT_")) {
            let in_config = r
                .config
                .as_ref()
                .is_some_and(|t| t.contains(&format!("\"{name}\"")));
            assert!(
                help.contains(&format!("[env: {name}="))
                    || help.contains(&format!("[env: {name}]"))
                    || in_config,
                "{what}: {name} is read neither by `shadowcat {}` nor by its configuration",
                r.argv[0]
            );
        }
        if let Some(path) = flag_value(&r.argv, "--http") {
            // demo-server: probes and ports on its port.
            let port = addr_port(&path);
            for (p, _) in &r.probes {
                assert_eq!(
                    *p, port,
                    "{what}: a probe aims at {p}, demo-server serves {port}"
                );
            }
            assert!(
                r.ports.iter().all(|p| *p == port),
                "{what}: ports {:?}",
                r.ports
            );
        }
        let Some(toml_text) = r.config.as_deref() else {
            if r.argv[0] == "gateway" {
                // No configuration in the file (systemd: the operator's): the defaults'.
                let longest = longest_shutdown(&GatewayConfig::default());
                let allowance = r.stop_allowance.expect("a stop timeout");
                assert!(
                    allowance > longest,
                    "{what}: {allowance:?} to stop, the default configuration may take {longest:?}"
                );
            }
            continue;
        };
        gateways += 1;
        // `config check` passes with the environment this run gives the gateway.
        let env = env_of(r);
        let env_refs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (_dir, file) = config_file(toml_text);
        let (code, out, err) = run(&["config", "check", &file], &env_refs).await;
        assert_eq!(code, 0, "{what}: config check:\n{out}{err}");
        assert!(out.contains(": OK"), "{what}: {out}");
        let cfg = parse_config(toml_text, what);
        // Probes and published ports: the listener's port.
        let listen = cfg.server.listen.port();
        for (port, path) in &r.probes {
            assert_eq!(
                *port, listen,
                "{what}: probe {path} on {port}, the gateway listens on {listen}"
            );
        }
        assert!(
            r.ports.contains(&listen),
            "{what}: publishes {:?}, the gateway listens on {listen}",
            r.ports
        );
        if let Some(allowance) = r.stop_allowance {
            let longest = longest_shutdown(&cfg);
            assert!(
                allowance > longest,
                "{what}: {allowance:?} between SIGTERM and SIGKILL, shutdown may take {longest:?}"
            );
        }
        // Upstream and store hosts are services of the same file, on the ports they serve.
        let urls = cfg
            .routes
            .iter()
            .flat_map(|rt| rt.upstreams.iter().filter_map(|u| u.url.clone()));
        for url in urls {
            let (host, port, _) = port_and_path(&url);
            if what.starts_with("deploy/compose.yaml") {
                let served = compose_services
                    .get(&host)
                    .unwrap_or_else(|| panic!("{what}: upstream {url}: no service {host}"));
                assert!(
                    served.contains(&port),
                    "{what}: upstream {url}: {host} serves {served:?}"
                );
            } else if what.starts_with("deploy/kubernetes/") {
                let svc = k8s_services
                    .get(&host)
                    .unwrap_or_else(|| panic!("{what}: upstream {url}: no Service {host}"));
                assert!(
                    svc.contains_key(&port),
                    "{what}: upstream {url}: Service ports {svc:?}"
                );
            }
        }
        if what.starts_with("deploy/compose.yaml") && cfg.server.store.starts_with("redis://") {
            let (host, _, _) = port_and_path(&cfg.server.store);
            assert!(
                compose_services.contains_key(&host),
                "{what}: store {}: no service {host}",
                cfg.server.store
            );
        }
        probe_live(r, toml_text).await;
    }
    // The image, both compose replicas, the Kubernetes Deployment.
    assert!(
        gateways >= 4,
        "gateway runs with a configuration: {gateways}"
    );
    // A compose service named in no run is fine (redis); every demo-server run was checked.
    let demo_runs: BTreeSet<&str> = runs
        .iter()
        .filter(|r| r.argv[0] == "demo-server")
        .map(|r| r.what.as_str())
        .collect();
    assert_eq!(
        demo_runs.len(),
        2,
        "demo servers (compose, kubernetes): {demo_runs:?}"
    );
}

/// Start a gateway from the run's configuration (on ephemeral loopback ports, memory store)
/// and ask it each probe path: `/health` must be 200, `/ready` its readiness JSON.
async fn probe_live(r: &Run, toml_text: &str) {
    let what = &r.what;
    let mut table: toml::Table = toml_text.parse().unwrap();
    let server = table
        .entry("server")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap();
    server.insert("listen".into(), "127.0.0.1:0".into());
    server.remove("store");
    if let Some(admin) = table.get_mut("admin").and_then(|a| a.as_table_mut()) {
        admin.insert("listen".into(), "127.0.0.1:0".into());
    }
    let (_dir, file) = config_file(&toml::to_string(&table).unwrap());
    let mut env = env_of(r);
    env.retain(|(k, _)| k != "SHADOWCAT_STORE" && k != "SHADOWCAT_LISTEN");
    // stdio upstreams (`command = "shadowcat"`) find the binary under test.
    let dir = Path::new(bin())
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let path = format!("{dir}:{}", std::env::var("PATH").unwrap_or_default());
    env.push(("PATH".into(), path));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = gateway(&["--config", &file], &env_refs).serve().await;
    for (_, path) in &r.probes {
        let (status, _, body) = get(&gw.base, path).await;
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{what}: GET {path}: {status} {body}"));
        match path.as_str() {
            "/health" => assert_eq!(status, 200, "{what}: GET /health: {body}"),
            "/ready" => assert!(
                json.get("ready").is_some() && (status == 200 || status == 503),
                "{what}: GET /ready: {status} {body}"
            ),
            other => panic!("{what}: probe path {other} is not a gateway health endpoint"),
        }
    }
}
