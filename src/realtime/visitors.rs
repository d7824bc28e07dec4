//! The `/visitors` namespace: handshake `auth: {sessionToken}` from `POST /v1/widget/session`.
//!
//! A visitor's socket joins `visitor:{id}` and its current conversation's room. Requests name no
//! conversation, or the visitor's own (another one is 404, as over REST).

use entity::visitors;
use sea_orm::EntityTrait;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::{
    ParserError, SocketIo,
    adapter::Adapter,
    extract::{SocketRef, TryData},
    handler::ConnectHandler,
};
use socketioxide_core::adapter::DefinedAdapter;

use super::Node;
use super::{
    VISITORS, room,
    session::{
        Limiter, Nothing, Refused, Session, auth_field, client_address, limiter, occupy, on,
        on_unknown, vacate,
    },
};
use crate::{
    auth::visitor::CurrentVisitor,
    chat::{
        messages::events_since,
        signals::{visitor_seen, visitor_typing},
        visitors::{
            NewMessage, current_conversation, end_as_visitor, send_as_visitor, visitor_view,
        },
    },
};

/// Who a socket is, from its handshake.
#[derive(Clone)]
struct VisitorSession {
    visitor: visitors::Model,
    /// The visitor's conversation when it connected (a visitor has one; reopening keeps it).
    conversation_id: i64,
    /// The client's address: its messages draw from that address's budget too.
    client: std::net::IpAddr,
    limiter: Limiter,
}

impl Session for VisitorSession {
    fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

pub(super) fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>, state: Node) -> A::InitRes {
    let authenticate = {
        let state = state.clone();
        move |socket: SocketRef<A>, TryData(auth): TryData<Value>| {
            let state = state.clone();
            async move { handshake(&state, &socket, auth).await }
        }
    };
    let connected = move |socket: SocketRef<A>| {
        let state = state.clone();
        async move {
            attach(&state, &socket);
            tell_place(&state, &socket).await;
        }
    };
    io.ns(VISITORS, connected.with(authenticate))
}

async fn handshake<A: Adapter>(
    state: &Node,
    socket: &SocketRef<A>,
    auth: Result<Value, ParserError>,
) -> Result<(), Refused> {
    let token = auth_field(auth, "sessionToken").ok_or_else(|| {
        Refused("missing auth.sessionToken (from POST /v1/widget/session)".into())
    })?;
    let current = CurrentVisitor::from_token(&state.db, &token).await?;
    occupy(
        state,
        socket,
        VISITORS,
        current.visitor.id,
        state.settings.sockets_per_visitor,
    )?;
    current.seen(&state.db).await;
    let visitor = current.visitor;
    let conversation = current_conversation(&state.db, &visitor, None).await?;
    socket.join([
        room::visitor(visitor.id),
        room::conversation(conversation.id),
    ]);
    socket.extensions.insert(VisitorSession {
        visitor,
        conversation_id: conversation.id,
        client: client_address(socket),
        limiter: limiter(state.settings.socket_events_per_second),
    });
    Ok(())
}

/// The visitors this node has sockets for, to vouch for them (see [`super::heartbeat`]).
pub(super) fn vouch<A: Adapter>(io: &SocketIo<A>) -> Vec<i64> {
    let Some(ns) = io.of(VISITORS) else {
        return Vec::new();
    };
    let mut ids: Vec<i64> = ns
        .sockets()
        .into_iter()
        .filter_map(|socket| {
            socket
                .extensions
                .get::<VisitorSession>()
                .map(|s| s.visitor.id)
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TypingRequest {
    conversation_id: Option<i64>,
    typing: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SeenRequest {
    conversation_id: Option<i64>,
    event_id: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SyncRequest {
    /// Only messages after this event id (those before it the widget has).
    after: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListRequest {
    conversation_id: Option<i64>,
    after: Option<i64>,
    limit: Option<u64>,
}

/// A waiting visitor hears its place as soon as it connects (pushes come only when it changes).
async fn tell_place<A: Adapter>(state: &Node, socket: &SocketRef<A>) {
    let Some(session) = socket.extensions.get::<VisitorSession>() else {
        return;
    };
    let conversation = entity::conversations::Entity::find_by_id(session.conversation_id)
        .one(&state.db)
        .await;
    let place = match conversation {
        Ok(Some(conversation)) => super::lines::place_of(&state.db, &conversation).await,
        Ok(None) => Ok(None),
        Err(err) => Err(err),
    };
    match place {
        Ok(Some(place)) => {
            let sent = socket.emit("queue:position", &place);
            if let Err(err) = super::checked(VISITORS, "queue:position", sent) {
                tracing::debug!(%err, "queue position not sent");
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(%err, "could not tell a visitor its place"),
    }
}

fn attach<A: Adapter>(state: &Node, socket: &SocketRef<A>) {
    let st = state.clone();
    on(
        socket,
        "message:send",
        move |_, session: VisitorSession, body: NewMessage| {
            let state = st.clone();
            async move {
                let known = Some(session.conversation_id);
                let client = session.client;
                Ok(
                    send_as_visitor(&state, &session.visitor, client, body, known)
                        .await?
                        .0,
                )
            }
        },
    );
    let st = state.clone();
    on(
        socket,
        "typing:set",
        move |_, session: VisitorSession, body: TypingRequest| {
            let state = st.clone();
            async move {
                let visitor = &session.visitor;
                visitor_typing(&state, visitor, body.conversation_id, body.typing).await
            }
        },
    );
    let st = state.clone();
    on(
        socket,
        "message:seen",
        move |_, session: VisitorSession, body: SeenRequest| {
            let state = st.clone();
            async move {
                let visitor = &session.visitor;
                visitor_seen(&state, visitor, body.conversation_id, body.event_id).await
            }
        },
    );
    let st = state.clone();
    on(
        socket,
        "message:list",
        move |_, session: VisitorSession, body: ListRequest| {
            let state = st.clone();
            async move {
                let conversation =
                    current_conversation(&state.db, &session.visitor, body.conversation_id).await?;
                let events =
                    events_since(&state.db, conversation.id, body.after, body.limit, true).await?;
                Ok(json!({ "conversationId": conversation.id, "events": events }))
            }
        },
    );
    let st = state.clone();
    on(
        socket,
        "conversation:end",
        move |_, session: VisitorSession, _: Nothing| {
            let state = st.clone();
            async move { end_as_visitor(&state, &session.visitor).await }
        },
    );
    let st = state.clone();
    on(
        socket,
        "sync",
        move |socket: SocketRef<A>, session: VisitorSession, body: SyncRequest| {
            let state = st.clone();
            async move {
                // The state as it is now, for a widget that may have missed pushes (after
                // `sync:required` or a reconnect).
                let view = visitor_view(&state.db, &session.visitor, None, body.after).await?;
                socket.join(room::conversation(view.conversation_id));
                Ok(view)
            }
        },
    );
    on_unknown::<A, VisitorSession>(socket);
    socket.on_disconnect(|socket: SocketRef<A>| async move { vacate(&socket) });
}
