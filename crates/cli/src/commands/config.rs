//! `shadowcat config check FILE` and `shadowcat config hash-key`.

use clap::Subcommand;
use shadowcat_gateway::GatewayConfig;
use shadowcat_gateway::auth::sha256_hex;
use shadowcat_proxy::upstream::composite::Failure;
use std::io::Read;
use std::path::PathBuf;

/// `shadowcat config …`.
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate a gateway configuration file. Prints a summary and exits 0 when it is usable;
    /// prints every problem (`FILE[:LINE:COL]: FIELD: PROBLEM`) and exits 1 when it is not.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print the SHA-256 (hex) of an API key read from stdin, for `auth.api_keys[].sha256`.
    /// A trailing newline is not part of the key.
    HashKey,
    /// Print the JSON Schema of the gateway configuration (for editor completion and
    /// checks: e.g. taplo's `#:schema` directive, or VS Code's Even Better TOML).
    Schema,
}

pub fn run(cmd: ConfigCmd) -> anyhow::Result<i32> {
    match cmd {
        ConfigCmd::Check { file } => match GatewayConfig::load(&file) {
            Ok(cfg) => {
                use std::fmt::Write as _;
                let mut out = String::new();
                let _ = writeln!(out, "{}: OK", file.display());
                let _ = writeln!(out, "  listen: {}", cfg.server.listen);
                let _ = writeln!(out, "  store: {}", cfg.server.store);
                let _ = match &cfg.auth {
                    Some(a) => writeln!(
                        out,
                        "  auth: {}{} API key(s)",
                        if a.jwt.is_some() { "JWT + " } else { "" },
                        a.api_keys.len()
                    ),
                    None => writeln!(
                        out,
                        "  auth: none (anyone who can reach the listener may connect)"
                    ),
                };
                if let Some(a) = cfg.admin.as_ref().filter(|a| a.enabled) {
                    let token = if a.token.is_some() || a.token_env.is_some() {
                        "token required"
                    } else {
                        "no token"
                    };
                    let _ = writeln!(out, "  admin: http://{}/ ({token})", a.listen);
                }
                for r in &cfg.routes {
                    if r.is_composite() {
                        // A server with an upstream set: its size and balancing too.
                        let names: Vec<String> = r
                            .servers
                            .iter()
                            .map(|m| match m.has_set() {
                                true => format!(
                                    "{} ({} upstream(s), {})",
                                    m.name,
                                    m.upstreams.len(),
                                    m.balance.unwrap_or_default().name()
                                ),
                                false => m.name.clone(),
                            })
                            .collect();
                        let _ = writeln!(
                            out,
                            "  route {}: composite of {} server(s) ({}), failure {}, {} rule(s)",
                            r.path,
                            names.len(),
                            names.join(", "),
                            match r.failure.unwrap_or_default() {
                                Failure::Open => "open",
                                Failure::Closed => "closed",
                            },
                            r.rules.len()
                        );
                        continue;
                    }
                    let _ = writeln!(
                        out,
                        "  route {}: {} upstream(s), {}, {} rule(s)",
                        r.path,
                        r.upstreams.len(),
                        r.balance.name(),
                        r.rules.len()
                    );
                }
                // A closed pipe (`| head`) is not an error of the check.
                let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(1)
            }
        },
        ConfigCmd::Schema => {
            let mut schema = serde_json::to_value(schemars::schema_for!(GatewayConfig))?;
            schema["title"] = serde_json::json!("Shadowcat gateway configuration");
            super::print(format!("{}\n", serde_json::to_string_pretty(&schema)?).as_bytes())
        }
        ConfigCmd::HashKey => {
            let mut key = String::new();
            std::io::stdin().read_to_string(&mut key)?;
            let key = key.strip_suffix('\n').unwrap_or(&key);
            let key = key.strip_suffix('\r').unwrap_or(key);
            if key.is_empty() {
                anyhow::bail!("no key on stdin");
            }
            println!("{}", sha256_hex(key.as_bytes()));
            Ok(0)
        }
    }
}
