//! `subscriptions/listen` on a held session: what a listener asked for and was granted, and
//! the resource subscriptions made on the server while some listener wants them.

use super::{CHANNEL_CAPACITY, Held};
use crate::translate::envelope::id_value;
use bytes::Bytes;
use serde_json::{Value, json};
use shadowcat_proto::{Frame, RequestId};
use std::sync::Arc;
use tokio::sync::mpsc;

/// `_meta` key tagging every frame of a `subscriptions/listen` stream with the listen id.
pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Which notifications a `subscriptions/listen` stream asked for (or was granted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `notifications/tools/list_changed`.
    pub tools: bool,
    /// `notifications/prompts/list_changed`.
    pub prompts: bool,
    /// `notifications/resources/list_changed`.
    pub resources: bool,
    /// `notifications/resources/updated` for these URIs.
    pub uris: Vec<String>,
}

impl Filter {
    /// The `notifications` param of a `subscriptions/listen` request.
    pub fn parse(params: &Value) -> Filter {
        let n = &params["notifications"];
        Filter {
            tools: n["toolsListChanged"].as_bool().unwrap_or(false),
            prompts: n["promptsListChanged"].as_bool().unwrap_or(false),
            resources: n["resourcesListChanged"].as_bool().unwrap_or(false),
            uris: n["resourceSubscriptions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// As the `notifications` object of an acknowledgement.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        if self.tools {
            m.insert("toolsListChanged".into(), json!(true));
        }
        if self.prompts {
            m.insert("promptsListChanged".into(), json!(true));
        }
        if self.resources {
            m.insert("resourcesListChanged".into(), json!(true));
        }
        if !self.uris.is_empty() {
            m.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(m)
    }

    pub(super) fn wants(&self, frame: &Frame) -> bool {
        match frame.method() {
            Some("notifications/tools/list_changed") => self.tools,
            Some("notifications/prompts/list_changed") => self.prompts,
            Some("notifications/resources/list_changed") => self.resources,
            Some("notifications/resources/updated") => {
                let uri = updated_uri(frame);
                uri.is_some_and(|u| self.uris.contains(&u))
            }
            _ => false,
        }
    }
}

fn updated_uri(frame: &Frame) -> Option<String> {
    let v: Value = serde_json::from_slice(frame.raw()).ok()?;
    v["params"]["uri"].as_str().map(str::to_owned)
}

pub(super) struct Listener {
    pub(super) filter: Filter,
    pub(super) subscription: Value,
    pub(super) tx: mpsc::Sender<Frame>,
}

/// A `subscriptions/listen` stream: the frames for it, and the guard that removes it.
pub struct Listening {
    /// The acknowledgement (first frame of the stream).
    pub ack: Frame,
    /// Later notifications, then a final result if the held session ends.
    pub rx: mpsc::Receiver<Frame>,
    /// Removes the listener when dropped.
    pub guard: ListenGuard,
}

/// Removes its listener (and unsubscribes resources nobody else listens to) when dropped.
pub struct ListenGuard {
    held: Arc<Held>,
    id: u64,
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        self.held.unlisten(self.id);
    }
}

impl Held {
    /// Open a `subscriptions/listen` stream with listen request id `listen_id`. The server's
    /// capabilities decide what is granted; granted resource URIs are subscribed on the server
    /// (`resources/subscribe`) while some listener wants them.
    pub async fn listen(self: &Arc<Self>, listen_id: &RequestId, asked: Filter) -> Listening {
        let caps = self
            .init
            .get()
            .map(|i| i["capabilities"].clone())
            .unwrap_or(Value::Null);
        let granted = Filter {
            tools: asked.tools && caps["tools"]["listChanged"] == json!(true),
            prompts: asked.prompts && caps["prompts"]["listChanged"] == json!(true),
            resources: asked.resources && caps["resources"]["listChanged"] == json!(true),
            uris: if caps["resources"]["subscribe"] == json!(true) {
                asked.uris
            } else {
                Vec::new()
            },
        };
        let subscription = id_value(listen_id);
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (id, new_uris) = {
            let mut t = self.table();
            let id = t.next_listener;
            t.next_listener += 1;
            let mut new_uris = Vec::new();
            for u in &granted.uris {
                let n = t.subscribed.entry(u.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    new_uris.push(u.clone());
                }
            }
            t.listeners.insert(
                id,
                Listener {
                    filter: granted.clone(),
                    subscription: subscription.clone(),
                    tx,
                },
            );
            (id, new_uris)
        };
        self.touch();
        for uri in new_uris {
            self.internal("resources/subscribe", json!({ "uri": uri }))
                .await;
        }
        let ack = json!({"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged",
            "params":{"notifications": granted.to_json(), "_meta": {SUBSCRIPTION_ID: subscription}}});
        let ack = Frame::parse_single(Bytes::from(ack.to_string()))
            .expect("a valid JSON-RPC notification");
        Listening {
            ack,
            rx,
            guard: ListenGuard {
                held: self.clone(),
                id,
            },
        }
    }

    fn unlisten(self: &Arc<Self>, id: u64) {
        let gone = {
            let mut t = self.table();
            let Some(l) = t.listeners.remove(&id) else {
                return;
            };
            let mut gone = Vec::new();
            for u in l.filter.uris {
                if let Some(n) = t.subscribed.get_mut(&u) {
                    *n -= 1;
                    if *n == 0 {
                        t.subscribed.remove(&u);
                        gone.push(u);
                    }
                }
            }
            gone
        };
        self.touch();
        if gone.is_empty() || !self.alive() {
            return;
        }
        let held = self.clone();
        self.core.tracker().spawn(async move {
            for uri in gone {
                held.internal("resources/unsubscribe", json!({ "uri": uri }))
                    .await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: Value) -> Frame {
        Frame::parse_single(Bytes::from(v.to_string())).unwrap()
    }

    #[test]
    fn filters_parse_serialise_and_match() {
        let f = Filter::parse(&json!({"notifications":{"toolsListChanged":true,
            "resourceSubscriptions":["demo://a"]}}));
        assert!(f.tools && !f.prompts && !f.resources);
        assert_eq!(f.uris, vec!["demo://a".to_string()]);
        assert_eq!(
            f.to_json(),
            json!({"toolsListChanged":true,"resourceSubscriptions":["demo://a"]})
        );
        assert!(f.wants(&frame(
            json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"})
        )));
        assert!(!f.wants(&frame(
            json!({"jsonrpc":"2.0","method":"notifications/prompts/list_changed"})
        )));
        assert!(f.wants(&frame(json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"demo://a"}}))));
        assert!(!f.wants(&frame(json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"demo://b"}}))));
        assert_eq!(Filter::parse(&json!({})).to_json(), json!({}));
    }
}
