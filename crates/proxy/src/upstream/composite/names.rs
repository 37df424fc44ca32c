//! Exposed names of a composite route's members: tools and prompts become `<server><sep><name>`,
//! resource URIs (and URI templates) become `<server>+<uri>`.
//!
//! Every exposed tool or prompt name matches `^[A-Za-z0-9_-]{1,max_len}$` (with `max_len` at most
//! 64), whatever the member called it. A name that has characters outside that set gets them
//! replaced by `_` plus a hash suffix (so `a.b` and `a_b` of one server stay apart); a name that is
//! too long is cut to a readable stem plus a hash suffix. The hash is taken over the server and the
//! original name only, so an exposed name depends on nothing but (server, original name, rules):
//! it is the same after a restart and, in [`PrefixMode::Always`], when another member is added or
//! removed. The rare exposed names that still clash are told apart by [`NameMap::build`]'s rule.
//!
//! The mapping is kept both ways in a [`NameMap`]; an exposed name is never split to find its
//! member. Resource URIs are the exception: [`expose_uri`] and [`parse_uri`] are a reversible scheme
//! made to be split.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// The longest exposed tool or prompt name any client accepts.
pub const MAX_NAME_LEN: usize = 64;

/// The separator between the server and the member's own name unless configured otherwise.
pub const DEFAULT_SEPARATOR: &str = "__";

/// How many hex digits of the hash a shortened or sanitised name carries.
const HASH_HEX: usize = 8;

/// How many re-hashes [`NameMap::build`] tries for one name that clashes before giving up. Only a
/// tiny `max_len` (a handful of possible names) can use them up.
const MAX_ATTEMPTS: u32 = 4096;

/// When a member's tool or prompt name gets its server prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    /// Every name is `<server><sep><name>`: names never change when members come and go.
    #[default]
    Always,
    /// Bare names, except a name offered by two or more members: those members' copies are prefixed.
    OnConflict,
    /// Bare names; two members offering the same name is an error ([`NameError::Collision`]).
    Never,
}

/// The rules for exposed tool and prompt names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRules {
    /// Between server and name: 1 to 4 characters, each `_` or `-`. Default `__`.
    pub separator: String,
    /// The longest exposed name, 1..=64. Default 64; lower it for clients that add their own
    /// prefix (such as `mcp__<server>__`) to the names they show the model.
    pub max_len: usize,
    /// When names get their server prefix.
    pub mode: PrefixMode,
}

impl Default for NameRules {
    fn default() -> Self {
        NameRules {
            separator: DEFAULT_SEPARATOR.to_string(),
            max_len: MAX_NAME_LEN,
            mode: PrefixMode::default(),
        }
    }
}

impl NameRules {
    /// Checks the separator and `max_len`; the message says which one is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        valid_separator(&self.separator)?;
        if !(1..=MAX_NAME_LEN).contains(&self.max_len) {
            return Err(format!(
                "max name length {} is out of range: it must be between 1 and {MAX_NAME_LEN}",
                self.max_len
            ));
        }
        Ok(())
    }

    /// `max_len` brought into 1..=64, so that even unvalidated rules yield valid names.
    fn limit(&self) -> usize {
        self.max_len.clamp(1, MAX_NAME_LEN)
    }
}

/// Checks a member (server) name: `^[a-z0-9][a-z0-9-]{0,31}$`. No `_`, so the default separator
/// `__` never occurs inside a server name, and no `+`, so [`parse_uri`] finds the server's end.
pub fn valid_server_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return Err("server name is empty".to_string());
    };
    if bytes.len() > 32 {
        return Err(format!(
            "server name `{}` is too long: at most 32 characters",
            shown(name)
        ));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "server name `{}` must start with a lowercase letter or a digit",
            shown(name)
        ));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(format!(
            "server name `{}` may only contain lowercase letters, digits and `-`",
            shown(name)
        ));
    }
    Ok(())
}

/// Checks a separator: 1 to 4 characters, each `_` or `-`.
///
/// A separator made of `-` only is allowed, but as server names may contain `-` it can make two
/// prefixed names equal (`a-b` + `-` + `c` and `a` + `-` + `b-c`); [`NameMap::build`] then tells
/// them apart by its collision rule. A separator with a `_` never does.
pub fn valid_separator(separator: &str) -> Result<(), String> {
    if separator.is_empty() {
        return Err("name separator is empty: use e.g. `__`".to_string());
    }
    if separator.len() > 4 || !separator.bytes().all(|b| b == b'_' || b == b'-') {
        return Err(format!(
            "name separator `{}` is invalid: it must be 1 to 4 characters, each `_` or `-`",
            shown(separator)
        ));
    }
    Ok(())
}

/// The exposed name of `name` offered by `server`: `<server><sep><name>` when `prefixed`, else
/// `name`, made to match `^[A-Za-z0-9_-]{1,max_len}$`:
///
/// - every character outside that set becomes `_`, and then a hash suffix is added;
/// - an empty result or one longer than `max_len` also gets the hash suffix;
/// - the hash suffix: the name is cut to `max_len - 9` characters (trailing `_`/`-` dropped), then
///   `_` and 8 hex digits of SHA-256 over the server and the original name are appended;
/// - when that leaves no stem (`max_len` of 9 or less, or a name of only `_`/`-`), the name is the
///   hash alone: `max_len` characters from `[0-9a-zA-Z_-]` (so `max_len` 1 still has 64 names, 2
///   has 4096), or 8 hex digits when `max_len` allows 10 or more.
///
/// The result depends only on the arguments. `max_len` outside 1..=64 is treated as the nearest
/// bound, so the result always matches the pattern even for rules that were not validated.
pub fn expose(server: &str, name: &str, prefixed: bool, rules: &NameRules) -> String {
    let (clean, changed) = cleaned(server, name, prefixed, rules);
    if !changed && !clean.is_empty() && clean.len() <= rules.limit() {
        return clean;
    }
    hashed(&clean, &hash(server, name, 0), rules.limit())
}

/// Which kind of names a [`NameMap`] holds, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Prompt,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
        })
    }
}

/// Why a [`NameMap`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// In [`PrefixMode::Never`], two members offer the same name.
    Collision {
        kind: Kind,
        /// The name both offer.
        name: String,
        /// The server first in member order.
        first: String,
        /// The other server.
        second: String,
    },
    /// `max_len` is so small that the names cannot all be told apart.
    TooMany { kind: Kind, max_len: usize },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Collision {
                kind,
                name,
                first,
                second,
            } => write!(
                f,
                "{kind} name `{}` is offered by both `{first}` and `{second}`; with prefix mode \
                 `never` every {kind} name must be unique: use prefix mode `on_conflict` or \
                 `always`, or drop one of the servers",
                shown(name)
            ),
            NameError::TooMany { kind, max_len } => write!(
                f,
                "the {kind} names of this route cannot all be told apart within {max_len} \
                 characters: raise the maximum name length"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// The exposed names of one kind (tools, or prompts) of all members, both ways.
#[derive(Debug, Clone, Default)]
pub struct NameMap {
    /// Exposed name → (member index, original name).
    by_exposed: HashMap<String, (usize, String)>,
    /// Per member index: original name → exposed name.
    by_member: Vec<HashMap<String, String>>,
}

impl NameMap {
    /// Builds the map from every member's names, in member order (index into `members`).
    ///
    /// A name listed twice by one member counts once. In [`PrefixMode::OnConflict`] a name offered
    /// by two or more members is prefixed for each of them (and only for them); in
    /// [`PrefixMode::Never`] such a name is a [`NameError::Collision`] naming the first two.
    ///
    /// **Collision rule.** Should two different (member, original name) pairs still get the same
    /// exposed name from [`expose`] (a bare name equal to another member's prefixed one, a hash
    /// clash, a `-` separator, a tiny `max_len`), the pair first in (member index, original name)
    /// order keeps it (names sorted within a member, so a member's list order does not matter).
    /// Every other pair of that group gets the hash-suffixed form of [`expose`], even if its name
    /// fits, with the hash over (server, original name, attempt number) for attempt 1, 2, ...
    /// until the result is neither another pair's own exposed name nor already given out. No pair is dropped or
    /// merged; [`NameError::TooMany`] if `max_len` leaves too few names to tell them apart. The
    /// rule depends on member order, so only such clashing names can change when members change.
    pub fn build(
        kind: Kind,
        members: &[(&str, &[String])],
        rules: &NameRules,
    ) -> Result<NameMap, NameError> {
        // Every distinct (member, original name) pair in order, sorted within a member.
        let pairs: Vec<(usize, &str)> = members
            .iter()
            .enumerate()
            .flat_map(|(member, (_, names))| {
                let sorted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
                sorted.into_iter().map(move |name| (member, name))
            })
            .collect();

        // Which members offer each original name (members in order, each once).
        let mut offered_by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &(member, name) in &pairs {
            offered_by.entry(name).or_default().push(member);
        }
        let server = |member: usize| members.get(member).map_or("", |(server, _)| *server);
        if rules.mode == PrefixMode::Never {
            let clash = offered_by
                .iter()
                .find_map(|(name, offering)| match offering[..] {
                    [first, second, ..] => Some((name, first, second)),
                    _ => None,
                });
            if let Some((name, first, second)) = clash {
                return Err(NameError::Collision {
                    kind,
                    name: (*name).to_string(),
                    first: server(first).to_string(),
                    second: server(second).to_string(),
                });
            }
        }
        let prefixed = |name: &str| match rules.mode {
            PrefixMode::Always => true,
            PrefixMode::OnConflict => offered_by.get(name).is_some_and(|m| m.len() > 1),
            PrefixMode::Never => false,
        };

        // Every pair's own exposed name; the first pair to claim one keeps it. All of these are in
        // the map before any other pair gets a hashed name, so none can take one of them.
        let natural: Vec<String> = pairs
            .iter()
            .map(|&(member, name)| expose(server(member), name, prefixed(name), rules))
            .collect();
        let mut map = NameMap {
            by_exposed: HashMap::with_capacity(pairs.len()),
            by_member: vec![HashMap::new(); members.len()],
        };
        let mut losers = Vec::new();
        for (&(member, name), exposed) in pairs.iter().zip(&natural) {
            if map.by_exposed.contains_key(exposed) {
                losers.push((member, name));
            } else {
                map.insert(member, name, exposed.clone());
            }
        }
        for (member, name) in losers {
            let (clean, _) = cleaned(server(member), name, prefixed(name), rules);
            let mut attempt = 1;
            let found = loop {
                if attempt > MAX_ATTEMPTS {
                    return Err(NameError::TooMany {
                        kind,
                        max_len: rules.limit(),
                    });
                }
                let candidate = hashed(&clean, &hash(server(member), name, attempt), rules.limit());
                if !map.by_exposed.contains_key(&candidate) {
                    break candidate;
                }
                attempt += 1;
            };
            map.insert(member, name, found);
        }
        Ok(map)
    }

    fn insert(&mut self, member: usize, original: &str, exposed: String) {
        if let Some(names) = self.by_member.get_mut(member) {
            names.insert(original.to_string(), exposed.clone());
        }
        self.by_exposed
            .insert(exposed, (member, original.to_string()));
    }

    /// The member (index, as given to [`NameMap::build`]) and its own name behind an exposed name.
    pub fn resolve(&self, exposed: &str) -> Option<(usize, &str)> {
        self.by_exposed
            .get(exposed)
            .map(|(member, original)| (*member, original.as_str()))
    }

    /// Every exposed name of `member`.
    pub fn names_of(&self, member: usize) -> impl Iterator<Item = &str> {
        self.by_member
            .get(member)
            .into_iter()
            .flat_map(|m| m.values().map(String::as_str))
    }

    /// The exposed name of `member`'s `original`.
    pub fn exposed(&self, member: usize, original: &str) -> Option<&str> {
        self.by_member
            .get(member)?
            .get(original)
            .map(String::as_str)
    }
}

/// The exposed URI (or URI template) of a member's resource: `<server>+<uri>`, e.g. `fs` and
/// `file:///a/b` give `fs+file:///a/b`, and `file:///{path}` gives `fs+file:///{path}`.
///
/// Resources are prefixed in every [`PrefixMode`]: a resource is read by URI, and two members'
/// URIs (or a URI and a template of another member) cannot be told apart otherwise, nor can the
/// member be found for a URI that only matches a template.
pub fn expose_uri(server: &str, uri: &str) -> String {
    format!("{server}+{uri}")
}

/// The server and the member's own URI in an exposed URI: split at the first `+`, only when the
/// part before it is a valid server name (see [`valid_server_name`]; it never contains `+`, so a
/// `+` in the member's URI is kept). Whether that server is a member is for the caller to check.
pub fn parse_uri(exposed: &str) -> Option<(&str, &str)> {
    let (server, uri) = exposed.split_once('+')?;
    valid_server_name(server).ok()?;
    Some((server, uri))
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The raw exposed name with every character outside `[A-Za-z0-9_-]` replaced by `_`, and whether
/// anything was replaced.
fn cleaned(server: &str, name: &str, prefixed: bool, rules: &NameRules) -> (String, bool) {
    let raw = if prefixed {
        format!("{server}{}{name}", rules.separator)
    } else {
        name.to_string()
    };
    let clean: String = raw
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .collect();
    let changed = clean != raw;
    (clean, changed)
}

/// `clean` (only allowed characters) cut to fit `max_len` with `_` and 8 hex digits of `digest`
/// after it, or the hash alone when no stem fits (see [`expose`]).
fn hashed(clean: &str, digest: &[u8], max_len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-";
    let stem_len = max_len.saturating_sub(HASH_HEX + 1);
    // `clean` is ASCII, so byte positions are character positions.
    let stem = clean
        .get(..stem_len.min(clean.len()))
        .unwrap_or_default()
        .trim_end_matches(['_', '-']);
    let hex = || -> String {
        digest
            .iter()
            .take(HASH_HEX / 2)
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    if !stem.is_empty() {
        format!("{stem}_{}", hex())
    } else if max_len > HASH_HEX {
        hex()
    } else {
        digest
            .iter()
            .take(max_len)
            .map(|b| char::from(ALPHABET[usize::from(b & 63)]))
            .collect()
    }
}

/// SHA-256 over the server, the original name and (from 1 on) an attempt number.
fn hash(server: &str, name: &str, attempt: u32) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(server.as_bytes());
    hasher.update([0]);
    hasher.update(name.as_bytes());
    if attempt > 0 {
        hasher.update([0]);
        hasher.update(attempt.to_be_bytes());
    }
    hasher.finalize().to_vec()
}

/// At most 64 characters of `s` for an error message, control characters escaped.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn valid(name: &str, max_len: usize) -> bool {
        !name.is_empty() && name.len() <= max_len && name.chars().all(allowed)
    }

    fn rules(mode: PrefixMode, max_len: usize) -> NameRules {
        NameRules {
            mode,
            max_len,
            ..NameRules::default()
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn build(members: &[(&str, Vec<String>)], rules: &NameRules) -> Result<NameMap, NameError> {
        let borrowed: Vec<(&str, &[String])> = members
            .iter()
            .map(|(server, names)| (*server, names.as_slice()))
            .collect();
        NameMap::build(Kind::Tool, &borrowed, rules)
    }

    /// Every pair is in the map both ways, each exposed name valid and distinct.
    fn check_map(map: &NameMap, members: &[(&str, Vec<String>)], max_len: usize) {
        let mut seen = HashSet::new();
        for (member, (_, list)) in members.iter().enumerate() {
            for name in list {
                let exposed = map.exposed(member, name).expect("every pair is mapped");
                assert!(valid(exposed, max_len), "{exposed:?} for max_len {max_len}");
                assert_eq!(map.resolve(exposed), Some((member, name.as_str())));
                seen.insert(exposed.to_string());
            }
        }
        let distinct: HashSet<(usize, &String)> = members
            .iter()
            .enumerate()
            .flat_map(|(m, (_, list))| list.iter().map(move |n| (m, n)))
            .collect();
        assert_eq!(seen.len(), distinct.len(), "exposed names are distinct");
    }

    #[test]
    fn plain_names_are_prefixed_as_is() {
        let r = NameRules::default();
        assert_eq!(expose("fs", "read_file", true, &r), "fs__read_file");
        assert_eq!(expose("fs", "read-file", false, &r), "read-file");
        let dash = NameRules {
            separator: "-".into(),
            ..NameRules::default()
        };
        assert_eq!(expose("git", "status", true, &dash), "git-status");
    }

    #[test]
    fn sanitised_names_get_a_hash_and_do_not_collide() {
        let r = NameRules::default();
        let dotted = expose("fs", "a.b", true, &r);
        let plain = expose("fs", "a_b", true, &r);
        assert_eq!(plain, "fs__a_b");
        assert!(dotted.starts_with("fs__a_b_") && dotted.len() == "fs__a_b_".len() + 8);
        assert_ne!(dotted, plain);
        // Distinct originals that sanitise alike get distinct hashes.
        assert_ne!(expose("fs", "a.b", true, &r), expose("fs", "a b", true, &r));
        // The same original of another server gets another hash, even bare.
        assert_ne!(
            expose("fs", "a.b", false, &r),
            expose("web", "a.b", false, &r)
        );
        let members = vec![("fs", names(&["a.b", "a_b", "a b", "ä"]))];
        check_map(&build(&members, &r).expect("builds"), &members, 64);
    }

    #[test]
    fn long_names_keep_a_stem_and_stay_distinct() {
        let r = NameRules::default();
        let long_a = format!("{}a", "x".repeat(80));
        let long_b = format!("{}b", "x".repeat(80));
        let a = expose("fs", &long_a, true, &r);
        let b = expose("fs", &long_b, true, &r);
        assert_eq!(a.len(), 64);
        assert!(a.starts_with("fs__xxxx"));
        assert_ne!(a, b);
        // Exactly 64 fits untouched; 65 does not.
        let fits = "y".repeat(60);
        assert_eq!(expose("fs", &fits, true, &r), format!("fs__{fits}"));
        assert_ne!(
            expose("fs", &format!("{fits}y"), true, &r),
            format!("fs__{fits}y")
        );
    }

    #[test]
    fn empty_name_is_still_valid() {
        let r = NameRules::default();
        assert!(valid(&expose("fs", "", false, &r), 64));
        assert_eq!(expose("fs", "", true, &r), "fs__");
    }

    #[test]
    fn every_max_len_is_honoured_and_names_stay_unique() {
        let many: Vec<String> = (0..12)
            .map(|i| format!("tool_number_{i}_with_a_long_name"))
            .chain(names(&["a", "b", "ab", "a.b", "a_b", "ä", ""]))
            .collect();
        for max_len in 1..=MAX_NAME_LEN {
            for mode in [PrefixMode::Always, PrefixMode::OnConflict] {
                let members = vec![("fs", many.clone()), ("web", names(&["a", "fetch"]))];
                let map = build(&members, &rules(mode, max_len))
                    .unwrap_or_else(|e| panic!("max_len {max_len}: {e}"));
                check_map(&map, &members, max_len);
            }
        }
    }

    #[test]
    fn tiny_max_len_uses_the_hash_alone_and_reports_exhaustion() {
        let r = rules(PrefixMode::Never, 4);
        assert_eq!(expose("fs", "ls", false, &r), "ls");
        let long = expose("fs", "list_files", false, &r);
        assert_eq!(long.len(), 4);
        assert_ne!(long, expose("fs", "list_filez", false, &r));
        // max_len 10 leaves a one-character stem.
        let ten = expose("fs", "list_files2", false, &rules(PrefixMode::Never, 10));
        assert!(ten.starts_with("l_") && ten.len() == 10, "{ten}");
        // A name of only `_`/`-` that needs the hash has no stem: 8 hex digits.
        let bare = expose("fs", "._", false, &NameRules::default());
        assert!(
            bare.len() == 8 && bare.chars().all(|c| c.is_ascii_hexdigit()),
            "{bare}"
        );
        // max_len 1 can tell apart at most 64 names.
        let fits: Vec<String> = (0..40).map(|i| format!("tool{i}")).collect();
        let map = build(&[("fs", fits.clone())], &rules(PrefixMode::Always, 1)).expect("builds");
        check_map(&map, &[("fs", fits)], 1);
        let too_many: Vec<String> = (0..65).map(|i| format!("tool{i}")).collect();
        let err = build(&[("fs", too_many)], &rules(PrefixMode::Always, 1))
            .expect_err("65 names do not fit in one character");
        assert_eq!(
            err,
            NameError::TooMany {
                kind: Kind::Tool,
                max_len: 1
            }
        );
        assert!(err.to_string().contains("within 1 characters"));
    }

    #[test]
    fn always_mode_is_stable_when_members_change() {
        let r = NameRules::default();
        let fs = ("fs", names(&["read", "write", "a.b", &"z".repeat(90)]));
        let web = ("web", names(&["fetch", "read"]));
        let git = ("git", names(&["status", "read"]));
        let before = build(&[fs.clone(), web.clone()], &r).expect("builds");
        let after = build(&[git.clone(), fs.clone(), web.clone()], &r).expect("builds");
        for name in &fs.1 {
            assert_eq!(before.exposed(0, name), after.exposed(1, name));
        }
        for name in &web.1 {
            assert_eq!(before.exposed(1, name), after.exposed(2, name));
        }
        // And a rebuild (a restart) gives the same names.
        let again = build(&[fs.clone(), web.clone()], &r).expect("builds");
        assert_eq!(before.exposed(0, "a.b"), again.exposed(0, "a.b"));
        assert_eq!(after.exposed(0, "status"), Some("git__status"));
    }

    #[test]
    fn on_conflict_prefixes_only_shared_names() {
        let r = rules(PrefixMode::OnConflict, 64);
        let members = vec![
            ("fs", names(&["read", "write"])),
            ("web", names(&["read", "fetch"])),
            ("git", names(&["status"])),
        ];
        let map = build(&members, &r).expect("builds");
        assert_eq!(map.exposed(0, "read"), Some("fs__read"));
        assert_eq!(map.exposed(1, "read"), Some("web__read"));
        assert_eq!(map.exposed(0, "write"), Some("write"));
        assert_eq!(map.exposed(1, "fetch"), Some("fetch"));
        assert_eq!(map.exposed(2, "status"), Some("status"));
        assert_eq!(map.resolve("read"), None);
        assert_eq!(map.resolve("web__read"), Some((1, "read")));
        check_map(&map, &members, 64);
    }

    #[test]
    fn never_mode_collision_names_both_servers() {
        let r = rules(PrefixMode::Never, 64);
        let members = vec![
            ("fs", names(&["read", "write"])),
            ("web", names(&["fetch", "write"])),
        ];
        let err = build(&members, &r).expect_err("`write` is offered twice");
        assert_eq!(
            err,
            NameError::Collision {
                kind: Kind::Tool,
                name: "write".into(),
                first: "fs".into(),
                second: "web".into()
            }
        );
        let message = err.to_string();
        assert!(message.starts_with("tool name `write` is offered by both `fs` and `web`"));
        // Without the clash, names are bare.
        let fine = vec![("fs", names(&["read"])), ("web", names(&["fetch"]))];
        let map = build(&fine, &r).expect("builds");
        assert_eq!(map.exposed(1, "fetch"), Some("fetch"));
        // The same name twice within one member is no clash.
        assert!(build(&[("fs", names(&["read", "read"]))], &r).is_ok());
    }

    #[test]
    fn exposed_name_clash_goes_to_the_later_pair() {
        // On conflict: `web`'s bare `fs__read` equals `fs`'s prefixed `read`.
        let r = rules(PrefixMode::OnConflict, 64);
        let members = vec![
            ("fs", names(&["read"])),
            ("web", names(&["fs__read"])),
            ("git", names(&["read"])),
        ];
        let map = build(&members, &r).expect("builds");
        assert_eq!(map.exposed(0, "read"), Some("fs__read"));
        let later = map.exposed(1, "fs__read").expect("kept, not dropped");
        assert_ne!(later, "fs__read");
        assert!(later.starts_with("fs__read_") && later.len() == "fs__read_".len() + 8);
        check_map(&map, &members, 64);
        // The same rule when the order is reversed: the first member keeps the plain string.
        let reversed = vec![
            ("web", names(&["fs__read"])),
            ("fs", names(&["read"])),
            ("git", names(&["read"])),
        ];
        let map = build(&reversed, &r).expect("builds");
        assert_eq!(map.exposed(0, "fs__read"), Some("fs__read"));
        assert_ne!(map.exposed(1, "read"), Some("fs__read"));
        check_map(&map, &reversed, 64);
    }

    #[test]
    fn a_hashed_name_never_takes_another_pairs_own_name() {
        let r = rules(PrefixMode::OnConflict, 64);
        let mut members = vec![
            ("fs", names(&["read"])),
            ("web", names(&["fs__read"])),
            ("git", names(&["read"])),
        ];
        let moved = build(&members, &r)
            .expect("builds")
            .exposed(1, "fs__read")
            .expect("mapped")
            .to_string();
        // A later member whose own (bare) name is exactly that hashed name keeps it.
        members.push(("zz", vec![moved.clone()]));
        let map = build(&members, &r).expect("builds");
        assert_eq!(map.exposed(3, &moved), Some(moved.as_str()));
        assert_ne!(map.exposed(1, "fs__read"), Some(moved.as_str()));
        check_map(&map, &members, 64);
    }

    #[test]
    fn dash_separator_ambiguity_is_resolved() {
        let r = NameRules {
            separator: "-".into(),
            ..NameRules::default()
        };
        let members = vec![("a-b", names(&["c"])), ("a", names(&["b-c"]))];
        let map = build(&members, &r).expect("builds");
        assert_eq!(map.exposed(0, "c"), Some("a-b-c"));
        assert_ne!(map.exposed(1, "b-c"), Some("a-b-c"));
        check_map(&map, &members, 64);
    }

    #[test]
    fn clashes_at_small_max_len_are_resolved() {
        // Two originals that sanitise and cut to the same stem at max_len 1 all but surely share
        // hex digits with something; every pair must still be distinct and valid.
        let members = vec![("fs", (0..10).map(|i| format!("t{i}x")).collect())];
        for max_len in 1..=12 {
            let map = build(&members, &rules(PrefixMode::Never, max_len)).expect("builds");
            check_map(&map, &members, max_len);
        }
    }

    #[test]
    fn server_names_and_separators_are_checked() {
        for ok in ["fs", "a", "0", "my-server-2", &"a".repeat(32)] {
            assert_eq!(valid_server_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-fs",
            "Fs",
            "f_s",
            "f+s",
            "f.s",
            "fs ",
            &"a".repeat(33),
            "ä",
        ] {
            assert!(valid_server_name(bad).is_err(), "{bad}");
        }
        for ok in ["_", "__", "-", "_-_-"] {
            assert_eq!(valid_separator(ok), Ok(()), "{ok}");
        }
        for bad in ["", "_____", ".", "__.", "a"] {
            assert!(valid_separator(bad).is_err(), "{bad}");
        }
        assert!(NameRules::default().validate().is_ok());
        assert!(rules(PrefixMode::Always, 0).validate().is_err());
        assert!(rules(PrefixMode::Always, 65).validate().is_err());
        assert!(rules(PrefixMode::Always, 1).validate().is_ok());
    }

    #[test]
    fn prefix_mode_deserialises_in_snake_case() {
        let modes: Vec<PrefixMode> =
            serde_json::from_str(r#"["always", "on_conflict", "never"]"#).expect("parses");
        assert_eq!(
            modes,
            [
                PrefixMode::Always,
                PrefixMode::OnConflict,
                PrefixMode::Never
            ]
        );
        assert!(serde_json::from_str::<PrefixMode>(r#""OnConflict""#).is_err());
    }

    #[test]
    fn uris_round_trip() {
        for (server, uri) in [
            ("fs", "file:///a/b"),
            ("fs", "file:///{path}"),
            ("git", "git+ssh://host/repo"),
            ("a-1", "mem://x+y+z"),
            ("fs", ""),
            ("fs", "+"),
        ] {
            let exposed = expose_uri(server, uri);
            assert_eq!(parse_uri(&exposed), Some((server, uri)), "{exposed}");
        }
        assert_eq!(expose_uri("fs", "file:///a/b"), "fs+file:///a/b");
        assert_eq!(parse_uri("file:///a/b"), None);
        assert_eq!(parse_uri("Fs+file:///a"), None);
        assert_eq!(parse_uri("+file:///a"), None);
        assert_eq!(parse_uri("file:///a+b"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn exposed_names_always_match(
            server in "[a-z0-9][a-z0-9-]{0,31}",
            name in any::<String>(),
            prefixed in any::<bool>(),
            max_len in 0usize..80,
            separator in "[_-]{1,4}",
        ) {
            let r = NameRules { separator, max_len, mode: PrefixMode::Always };
            let exposed = expose(&server, &name, prefixed, &r);
            prop_assert!(valid(&exposed, max_len.clamp(1, 64)), "{:?}", exposed);
            prop_assert_eq!(&exposed, &expose(&server, &name, prefixed, &r));
        }

        #[test]
        fn maps_are_complete_and_distinct(
            fs in proptest::collection::vec("[a-z._ä]{0,70}", 0..12),
            web in proptest::collection::vec("[a-z._]{0,6}", 0..12),
            max_len in 8usize..=64,
            mode in prop_oneof![Just(PrefixMode::Always), Just(PrefixMode::OnConflict)],
        ) {
            let members = vec![("fs", fs), ("web", web)];
            let map = build(&members, &rules(mode, max_len)).expect("builds");
            check_map(&map, &members, max_len);
        }

        #[test]
        fn parse_uri_never_panics_and_inverts_expose(s in any::<String>()) {
            if let Some((server, uri)) = parse_uri(&s) {
                prop_assert_eq!(expose_uri(server, uri), s);
            }
        }
    }
}
