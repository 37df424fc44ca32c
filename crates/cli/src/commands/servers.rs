//! `--server NAME=URL|CMD ARGS`: a member server of a composite route, read the same way by
//! `forward http` (which builds its spec directly) and `gateway` (which turns it into a
//! `[[routes.servers]]` entry, so its children get the gateway's minimal environment).

use crate::args::UpstreamTransport;
use anyhow::bail;
use shadowcat_proxy::upstream::composite::names;

/// Where a `--server` member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// An HTTP server: its URL (prefix removed) and transport.
    Url {
        url: String,
        transport: UpstreamTransport,
    },
    /// A stdio server: the program and its arguments (split on whitespace).
    Command { program: String, args: Vec<String> },
}

/// One `--server` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFlag {
    /// The member's name (already checked).
    pub name: String,
    /// Where it is.
    pub place: Place,
}

/// A URL's transport: its prefix (`sse+`, `auto+`, `streamable+`) or else `default`, and the
/// URL without the prefix. `None` when it is not an http(s) URL.
/// `--header Name: value` flags as pairs.
pub fn headers(list: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    list.iter()
        .map(|h| match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => anyhow::bail!("--header `{h}` must look like `Name: value`"),
        })
        .collect()
}

pub fn url_transport(raw: &str, default: UpstreamTransport) -> Option<(UpstreamTransport, &str)> {
    let prefixes = [
        ("sse+", UpstreamTransport::Sse),
        ("auto+", UpstreamTransport::Auto),
        ("streamable+", UpstreamTransport::Streamable),
    ];
    let (transport, url) = prefixes
        .iter()
        .find_map(|(p, t)| raw.strip_prefix(p).map(|u| (*t, u)))
        .unwrap_or((default, raw));
    (url.starts_with("http://") || url.starts_with("https://")).then_some((transport, url))
}

/// Read `NAME=URL` or `NAME=CMD ARGS`; URLs without a transport prefix get `default`.
pub fn parse(raw: &str, default: UpstreamTransport) -> anyhow::Result<ServerFlag> {
    let Some((name, value)) = raw.split_once('=') else {
        bail!("--server `{raw}` must be NAME=URL or NAME=CMD");
    };
    names::valid_server_name(name).map_err(|e| anyhow::anyhow!("--server `{raw}`: {e}"))?;
    let place = match url_transport(value, default) {
        Some((transport, url)) => Place::Url {
            url: url.to_string(),
            transport,
        },
        None => {
            let mut words = value.split_whitespace().map(str::to_string);
            let Some(program) = words.next() else {
                bail!("--server `{raw}` has an empty command");
            };
            Place::Command {
                program,
                args: words.collect(),
            }
        }
    };
    Ok(ServerFlag {
        name: name.to_string(),
        place,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_commands_and_bad_flags() {
        let s = parse("a=sse+http://h/sse", UpstreamTransport::Streamable).unwrap();
        assert_eq!(
            s.place,
            Place::Url {
                url: "http://h/sse".into(),
                transport: UpstreamTransport::Sse
            }
        );
        let s = parse("b=prog --x 1", UpstreamTransport::Streamable).unwrap();
        assert_eq!(s.name, "b");
        assert_eq!(
            s.place,
            Place::Command {
                program: "prog".into(),
                args: vec!["--x".into(), "1".into()]
            }
        );
        assert!(parse("nameless", UpstreamTransport::Streamable).is_err());
        assert!(parse("a= ", UpstreamTransport::Streamable).is_err());
        let e = parse("Bad_Name=prog", UpstreamTransport::Streamable)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--server `Bad_Name=prog`"), "{e}");
    }
}
