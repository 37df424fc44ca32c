//! The Shadowcat relay engine: fronts → sessions → pipeline → upstreams.
//!
//! * [`front`]: client side (stdio, Streamable HTTP, legacy HTTP+SSE).
//! * [`session`]: one client's conversation with its own upstream.
//! * [`pipeline`]: hooks run on every frame in both directions.
//! * [`upstream`]: server side (stdio child process, Streamable HTTP and HTTP+SSE clients,
//!   transport detection).
//! * [`forward`]: the `forward stdio` and `forward http` modes, compositions of the parts above.
//! * [`runtime`]: process-level shutdown signals.
//! * The gateway (reverse proxy) mode lives in its own crate, `shadowcat-gateway`: policy that
//!   plugs into the seams here ([`front::http::Policy`] for admission and routing,
//!   [`session::place::Placer`] for placement, pipeline hooks, admin API extensions). The
//!   engine never imports it.
//! * [`intercept`]: interceptor rules (`--rules`) and paused messages; [`admin`]: the admin
//!   listener (paused messages, live traffic, extensions such as the gateway's sessions and
//!   upstreams, web page).
//! * [`record`]: the recorder hook (`--record`), writing tapes in the background.
//! * [`translate`]: era translation (2026-07-28 clients ↔ session-based servers and back).
//! * [`shadow`]: shadow traffic (`--shadow`): requests mirrored to a second upstream, replies compared.

pub mod admin;
pub mod audit;
pub mod error;
pub mod forward;
pub mod front;
pub mod guard;
pub mod intercept;
pub mod pipeline;
pub mod record;
pub mod runtime;
pub mod session;
pub mod shadow;
pub mod sync;
pub mod tracecontext;
pub mod translate;
pub mod upstream;

pub use error::{ProxyError, Side};

/// docs/architecture.md describes the code as it is: every source file it names exists, every
/// code path it names is declared, and every module of the engine is described. (Rustdoc links are checked by `cargo doc` in CI.)
#[cfg(test)]
mod architecture_doc {
    const DOC: &str = include_str!("../../../docs/architecture.md");

    fn sources(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn every_file_it_names_exists() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        sources(&root.join("crates"), &mut files);
        let named = DOC
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| s.ends_with(".rs") && !s.contains(' '));
        for name in named {
            assert!(
                files.iter().any(|f| f.ends_with(&format!("/{name}"))),
                "docs/architecture.md names `{name}`, which no longer exists"
            );
        }
    }

    /// Every code path it names in backticks (`Type::method`, `module::item`) still names
    /// something declared in the workspace: its last segment is a function, type, module,
    /// constant, variant or field of some source file. A rename or removal that leaves the
    /// document describing code that is gone fails here.
    #[test]
    fn every_code_path_it_names_is_declared() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        sources(&root.join("crates"), &mut files);
        // Every name declared by a line: after a keyword (`fn x`, `struct X`…), or first on it
        // (enum variants, struct fields).
        let mut names = std::collections::HashSet::new();
        let ident_at = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let keywords = [
            "fn ", "struct ", "enum ", "trait ", "type ", "mod ", "const ", "static ",
        ];
        for f in &files {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                let line = line.trim_start();
                names.insert(ident_at(line.trim_start_matches("pub ")));
                for k in keywords {
                    for (at, _) in line.match_indices(k) {
                        names.insert(ident_at(&line[at + k.len()..]));
                    }
                }
            }
        }
        let is_ident = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        let paths = DOC.split('`').skip(1).step_by(2).filter_map(|s| {
            let s = s.strip_suffix("()").unwrap_or(s);
            let parts: Vec<&str> = s.split("::").collect();
            (parts.len() > 1 && parts.iter().all(|p| is_ident(p))).then_some((s, parts))
        });
        for (path, parts) in paths {
            let last = parts[parts.len() - 1];
            assert!(
                names.contains(last),
                "docs/architecture.md names `{path}`, but nothing called `{last}` is declared"
            );
        }
    }

    #[test]
    fn every_engine_module_is_described() {
        let lib = include_str!("lib.rs");
        let modules = lib
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod "))
            .map(|m| m.trim_end_matches(';'));
        for m in modules {
            let described = [format!("`{m}/"), format!("`{m}.rs`"), format!("`{m}`")]
                .iter()
                .any(|n| DOC.contains(n.as_str()));
            assert!(
                described,
                "docs/architecture.md does not describe module `{m}`"
            );
        }
    }
}
