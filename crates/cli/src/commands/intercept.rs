//! `shadowcat intercept list | resume ID | edit ID | drop ID`: messages paused by `pause`
//! rules on a running proxy, through its admin API (`--admin`).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The proxy's admin API (its `--admin` address).
    #[arg(long, env = "SHADOWCAT_ADMIN", default_value = "http://127.0.0.1:7474")]
    pub admin: String,
    /// Admin token (the proxy's `--admin-token`).
    #[arg(long, env = "SHADOWCAT_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum InterceptCmd {
    /// List paused messages.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a paused message through unchanged.
    Resume {
        #[command(flatten)]
        admin: AdminArgs,
        /// Its id (from `list`).
        id: u64,
    },
    /// Let an edited message through instead. The new message comes from --message or --file
    /// (`-` for stdin); without either, $EDITOR opens the paused one. Its JSON-RPC id is kept.
    Edit {
        #[command(flatten)]
        admin: AdminArgs,
        /// Its id (from `list`).
        id: u64,
        /// The new JSON-RPC message.
        #[arg(long, conflicts_with = "file")]
        message: Option<String>,
        /// Read the new message from this file (`-`: stdin).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Discard a paused message (a paused request is answered with an error).
    Drop {
        #[command(flatten)]
        admin: AdminArgs,
        /// Its id (from `list`).
        id: u64,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(a: &AdminArgs) -> anyhow::Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
            base: a.admin.trim_end_matches('/').to_string(),
            token: a.token.clone(),
        })
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the admin API at {} (is the proxy running with --admin?)",
                self.base
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let why = body["error"].as_str().unwrap_or("no details");
            bail!("the admin API answered {status}: {why}");
        }
        Ok(body)
    }

    async fn list(&self) -> anyhow::Result<Vec<Value>> {
        let v = self
            .call(self.http.get(format!("{}/intercept/paused", self.base)))
            .await?;
        Ok(v["paused"].as_array().cloned().unwrap_or_default())
    }

    async fn decide(&self, id: u64, verb: &str, body: Option<String>) -> anyhow::Result<()> {
        let mut req = self
            .http
            .post(format!("{}/intercept/paused/{id}/{verb}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        self.call(req).await.map(|_| ())
    }
}

/// The paused message in a new private temp file, for the editor.
fn paused_message_file(current: &Value) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("shadowcat-paused-")
        .suffix(".json")
        .tempfile()
        .context("cannot create a temporary file for the editor")?;
    file.write_all((serde_json::to_string_pretty(current)? + "\n").as_bytes())?;
    file.flush()?;
    Ok(file)
}

fn edited_in_editor(current: &Value) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("give the new message with --message or --file (no terminal for an editor)");
    }
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // A private file (0600, unpredictable name, removed when dropped): the message may hold
    // secrets, and a predictable name in a shared temp dir can be pre-created by another user.
    let file = paused_message_file(current)?;
    let path = file.path();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status()
        .with_context(|| format!("cannot run the editor `{editor}`"))?;
    let text = std::fs::read_to_string(path)?;
    drop(file);
    if !status.success() {
        bail!("the editor exited with {status}; nothing was changed");
    }
    Ok(text)
}

pub async fn run(cmd: InterceptCmd) -> anyhow::Result<i32> {
    match cmd {
        InterceptCmd::List { admin, json } => {
            let paused = Client::new(&admin)?.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&paused)?);
                return Ok(0);
            }
            if paused.is_empty() {
                println!("no paused messages");
            }
            for p in &paused {
                let m = &p["message"];
                let what = m["method"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("reply to {}", m["id"]));
                let name = m["params"]["name"]
                    .as_str()
                    .or(m["params"]["uri"].as_str())
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default();
                println!(
                    "{:>4}  {}  {}{}  session {}  rule `{}`  since {}  timeout {}s\n      {}",
                    p["id"],
                    p["direction"].as_str().unwrap_or(""),
                    what,
                    name,
                    p["session"].as_str().unwrap_or(""),
                    p["rule"].as_str().unwrap_or(""),
                    p["since"].as_str().unwrap_or(""),
                    p["timeout_s"],
                    m
                );
            }
            Ok(0)
        }
        InterceptCmd::Resume { admin, id } => {
            Client::new(&admin)?.decide(id, "resume", None).await?;
            println!("resumed {id}");
            Ok(0)
        }
        InterceptCmd::Drop { admin, id } => {
            Client::new(&admin)?.decide(id, "drop", None).await?;
            println!("dropped {id}");
            Ok(0)
        }
        InterceptCmd::Edit {
            admin,
            id,
            message,
            file,
        } => {
            let client = Client::new(&admin)?;
            let text = match (message, file) {
                (Some(m), _) => m,
                (None, Some(p)) if p.as_os_str() == "-" => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s)?;
                    s
                }
                (None, Some(p)) => std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
                (None, None) => {
                    let paused = client.list().await?;
                    let Some(cur) = paused.iter().find(|p| p["id"] == id) else {
                        bail!("no paused message with id {id}");
                    };
                    edited_in_editor(&cur["message"])?
                }
            };
            let v: Value = serde_json::from_str(&text).context("the new message is not JSON")?;
            client.decide(id, "edit", Some(v.to_string())).await?;
            println!("edited and resumed {id}");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_editors_file_is_private_and_unpredictable() {
        let msg = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "x"});
        let (a, b) = (
            paused_message_file(&msg).unwrap(),
            paused_message_file(&msg).unwrap(),
        );
        assert_ne!(a.path(), b.path(), "a fresh name each time");
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(a.path()).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), msg);
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists(), "removed when done");
    }
}
