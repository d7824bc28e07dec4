//! The `/agents` namespace: handshake `auth: {token}` with the agent's JWT.
//!
//! On connect a socket joins `agent:{id}`, its groups, its active conversations and, for
//! supervisors and admins, `account:{id}`. Every request re-reads the agent's row, so a deleted
//! agent or a revoked token stops working at once (and the socket is disconnected).

use std::{future::Future, time::Duration};

use chrono::{SubsecRound, Utc};
use entity::{
    agents, conversations,
    enums::{AgentRole, ConversationStatus},
};
use jobs::{
    agent_presence::{AgentDisconnected, held_by},
    conversation::groups_of_agent,
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
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
    AGENTS, room,
    session::{
        Limiter, Nothing, Refused, Session, auth_field, limiter, occupy, on, on_unknown, vacate,
    },
};
use crate::{
    auth::{CurrentAgent, rank},
    chat::{
        self,
        access::{held, visible},
        agents::{StatusBody, set_status},
        conversations::{CloseBody, TransferBody},
        lines::lines_for,
        messages::{NewEvent, events_since, send_as_agent},
        signals::{agent_seen, agent_typing},
        views::{AgentView, ConversationView},
    },
    domain::{ClientMessageId, MessageContent, Name},
    error::ApiError,
    state::AppState,
};

/// Who a socket is, from its handshake.
#[derive(Clone)]
struct AgentSession {
    agent_id: i64,
    account_id: i64,
    token_version: i32,
    /// The token's expiry (Unix seconds): the socket lives no longer than its token.
    expires_at: i64,
    limiter: Limiter,
}

impl Session for AgentSession {
    fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl AgentSession {
    /// The agent as it is now.
    async fn caller(&self, state: &AppState) -> Result<CurrentAgent, ApiError> {
        if self.expired() {
            return Err(ApiError::Unauthorized("token expired"));
        }
        CurrentAgent::reload(
            &state.db,
            self.agent_id,
            self.account_id,
            self.token_version,
        )
        .await
    }

    fn expired(&self) -> bool {
        Utc::now().timestamp() >= self.expires_at
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
    // Everything happens in the handshake, before the client hears it is connected.
    let connected = |_: SocketRef<A>| async {};
    io.ns(AGENTS, connected.with(authenticate))
}

/// Checks the token, joins the rooms, registers the handlers and records the connection, all
/// before the client hears it is connected: its first request finds everything in place, and a
/// socket that dies meanwhile already has its disconnect handler.
async fn handshake<A: Adapter>(
    state: &Node,
    socket: &SocketRef<A>,
    auth: Result<Value, ParserError>,
) -> Result<(), Refused> {
    let token = auth_field(auth, "token")
        .ok_or_else(|| Refused("missing auth.token (the agent's access token)".into()))?;
    let claims = state.tokens.verify(token.trim())?;
    let agent_id = crate::auth::TokenKeys::agent_id(&claims)?;
    let caller = CurrentAgent::reload(&state.db, agent_id, claims.acc, claims.ver).await?;
    let agent = &caller.agent;
    occupy(
        state,
        socket,
        AGENTS,
        agent.id,
        state.settings.sockets_per_agent,
    )?;
    let db_err = |err| Refused::from(ApiError::from(err));
    let rooms = rooms_of(&state.db, agent).await.map_err(db_err)?;
    socket.join(rooms);
    socket.extensions.insert(AgentSession {
        agent_id: agent.id,
        account_id: agent.account_id,
        token_version: agent.token_version,
        expires_at: claims.exp,
        limiter: limiter(state.settings.socket_events_per_second),
    });
    attach(state, socket);
    // Recorded last: from here on a drop of this socket is seen by its disconnect handler.
    let now = Utc::now().trunc_subsecs(6);
    agents::Entity::update_many()
        .col_expr(agents::Column::ConnectedAt, Expr::value(now))
        .col_expr(agents::Column::LastSeenAt, Expr::value(now))
        .filter(agents::Column::Id.eq(agent.id))
        .exec(&state.db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The rooms an agent's socket belongs in: its own, its account's (supervisors and admins), its
/// groups' and those of the chats it holds.
async fn rooms_of(
    db: &impl sea_orm::ConnectionTrait,
    agent: &agents::Model,
) -> Result<Vec<String>, sea_orm::DbErr> {
    let held = held_by(db, agent.id).await?;
    rooms_with(db, agent, &held).await
}

/// [`rooms_of`], with the chats it holds already read.
async fn rooms_with(
    db: &impl sea_orm::ConnectionTrait,
    agent: &agents::Model,
    held: &[i64],
) -> Result<Vec<String>, sea_orm::DbErr> {
    let mut rooms = vec![room::agent(agent.id)];
    if rank(agent.role) >= rank(AgentRole::Supervisor) {
        rooms.push(room::account(agent.account_id));
    }
    rooms.extend(
        groups_of_agent(db, agent.id)
            .await?
            .into_iter()
            .map(room::group),
    );
    rooms.extend(held.iter().copied().map(room::conversation));
    Ok(rooms)
}

/// The agent's whole picture, for a console that may have missed pushes (after `sync:required`
/// or a reconnect): the agent, the chats it holds and its groups' waiting lines. The socket also
/// joins the rooms a lost push should have put it in, and (agents; supervisors join chats at will)
/// leaves the rooms of chats it no longer holds.
async fn sync<A: Adapter>(
    state: &AppState,
    socket: &SocketRef<A>,
    caller: &CurrentAgent,
) -> Result<Value, ApiError> {
    let agent = &caller.agent;
    let held = conversations::Entity::find()
        .filter(conversations::Column::AssignedAgentId.eq(agent.id))
        .filter(conversations::Column::Status.eq(ConversationStatus::Active))
        .order_by_asc(conversations::Column::Id)
        .all(&state.db)
        .await?;
    let ids: Vec<i64> = held.iter().map(|c| c.id).collect();
    let rooms = rooms_with(&state.db, agent, &ids).await?;
    if rank(agent.role) < rank(AgentRole::Supervisor) {
        let stale: Vec<i64> = socket
            .rooms()
            .into_iter()
            .filter(|room| !rooms.iter().any(|r| r == room))
            .filter_map(|room| room.strip_prefix("conversation:")?.parse().ok())
            .collect();
        if !stale.is_empty() {
            // A chat assigned since the read above has joined its room meanwhile: it stays.
            let now_held = held_by(&state.db, agent.id).await?;
            socket.leave(
                stale
                    .into_iter()
                    .filter(|id| !now_held.contains(id))
                    .map(room::conversation)
                    .collect::<Vec<_>>(),
            );
        }
    }
    socket.join(rooms);
    let mut views = Vec::with_capacity(held.len());
    for conversation in held {
        views.push(ConversationView::new(&state.db, conversation).await?);
    }
    Ok(json!({
        "agent": AgentView::one(&state.db, agent.clone()).await?,
        "conversations": views,
        "queue": lines_for(&state.db, caller).await?,
    }))
}

/// The agents this node has sockets for, to vouch for them (see [`super::heartbeat`]); sockets
/// whose token expired are disconnected instead.
pub(super) fn vouch<A: Adapter>(io: &SocketIo<A>) -> Vec<i64> {
    let Some(ns) = io.of(AGENTS) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for socket in ns.sockets() {
        match socket.extensions.get::<AgentSession>() {
            Some(session) if session.expired() => {
                let _ = socket.disconnect();
            }
            Some(session) => ids.push(session.agent_id),
            None => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Disconnects this node's agent sockets whose token no longer holds: the agent was deleted
/// (absent from `live`) or its tokens revoked since the handshake (another version in `live`).
/// The sign-out push does this at once; this catches a push that was lost, and a handshake that
/// read the agent just before the revocation.
pub(super) fn drop_revoked<A: Adapter>(
    io: &SocketIo<A>,
    vouched: &[i64],
    live: &std::collections::HashMap<i64, i32>,
) {
    let Some(ns) = io.of(AGENTS) else {
        return;
    };
    for socket in ns.sockets() {
        let revoked = socket
            .extensions
            .get::<AgentSession>()
            .is_some_and(|session| {
                // Versions only grow: a socket newer than the snapshot signed in after it.
                vouched.binary_search(&session.agent_id).is_ok()
                    && live
                        .get(&session.agent_id)
                        .is_none_or(|&version| version > session.token_version)
            });
        if revoked {
            let _ = socket.disconnect();
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConversationRef {
    conversation_id: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TransferRequest {
    conversation_id: i64,
    agent_id: Option<i64>,
    group_id: Option<i64>,
    reason: Option<Name>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CloseRequest {
    conversation_id: i64,
    reason: Option<Name>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SendRequest {
    conversation_id: i64,
    content: MessageContent,
    client_message_id: Option<ClientMessageId>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TypingRequest {
    conversation_id: i64,
    typing: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SeenRequest {
    conversation_id: i64,
    event_id: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListRequest {
    conversation_id: i64,
    after: Option<i64>,
    limit: Option<u64>,
}

/// Registers `event` for an agent's socket: its handler gets the node, the agent as it is now
/// (re-read at every request, so a deleted agent or a revoked token is refused) and the request.
fn on_agent<A, B, T, F, Fut>(node: &Node, socket: &SocketRef<A>, event: &'static str, handle: F)
where
    A: Adapter,
    B: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    F: Fn(Node, CurrentAgent, B) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let node = node.clone();
    on(socket, event, move |_, session: AgentSession, body: B| {
        let (node, handle) = (node.clone(), handle.clone());
        async move {
            let caller = session.caller(&node).await?;
            handle(node, caller, body).await
        }
    });
}

/// Registers the requests of a connected agent socket: each one is a use case of `chat`.
fn attach<A: Adapter>(node: &Node, socket: &SocketRef<A>) {
    on_agent(
        node,
        socket,
        "status:set",
        |node, caller, body: StatusBody| async move { set_status(&node, caller, body).await },
    );
    let st = node.clone();
    on(
        socket,
        "conversation:join",
        move |socket: SocketRef<A>, session: AgentSession, body: ConversationRef| {
            let state = st.clone();
            async move {
                let caller = session.caller(&state).await?;
                let conversation = held(&state.db, &caller, body.conversation_id).await?;
                socket.join(room::conversation(conversation.id));
                ConversationView::new(&state.db, conversation).await
            }
        },
    );
    on(
        socket,
        "conversation:leave",
        |socket: SocketRef<A>, _: AgentSession, body: ConversationRef| async move {
            socket.leave(room::conversation(body.conversation_id));
            Ok(json!({ "conversationId": body.conversation_id }))
        },
    );
    on_agent(
        node,
        socket,
        "conversation:pickup",
        |node, caller, body: ConversationRef| async move {
            chat::conversations::pickup(&node, &caller, body.conversation_id).await
        },
    );
    on_agent(
        node,
        socket,
        "conversation:transfer",
        |node, caller, body: TransferRequest| async move {
            let transfer = TransferBody::new(body.agent_id, body.group_id, body.reason);
            chat::conversations::transfer(&node, &caller, body.conversation_id, transfer).await
        },
    );
    on_agent(
        node,
        socket,
        "conversation:close",
        |node, caller, body: CloseRequest| async move {
            let close = CloseBody::new(body.reason);
            chat::conversations::close(&node, &caller, body.conversation_id, close).await
        },
    );
    on_agent(
        node,
        socket,
        "message:send",
        |node, caller, body: SendRequest| async move {
            let conversation = visible(&node.db, &caller, body.conversation_id).await?;
            let message = NewEvent::new(body.content, body.client_message_id);
            let (event, _) = send_as_agent(&node, &caller, &conversation, message).await?;
            Ok(event)
        },
    );
    on_agent(
        node,
        socket,
        "typing:set",
        |node, caller, body: TypingRequest| async move {
            agent_typing(&node, &caller, body.conversation_id, body.typing).await
        },
    );
    on_agent(
        node,
        socket,
        "message:seen",
        |node, caller, body: SeenRequest| async move {
            agent_seen(&node, &caller, body.conversation_id, body.event_id).await
        },
    );
    on_agent(
        node,
        socket,
        "message:list",
        |node, caller, body: ListRequest| async move {
            let conversation = visible(&node.db, &caller, body.conversation_id).await?;
            let events =
                events_since(&node.db, conversation.id, body.after, body.limit, false).await?;
            Ok(json!({ "conversationId": conversation.id, "events": events }))
        },
    );
    let st = node.clone();
    on(
        socket,
        "sync",
        move |socket: SocketRef<A>, session: AgentSession, _: Nothing| {
            let state = st.clone();
            async move { sync(&state, &socket, &session.caller(&state).await?).await }
        },
    );
    on_unknown::<A, AgentSession>(socket);
    let node = node.clone();
    socket.on_disconnect(move |socket: SocketRef<A>| async move {
        vacate(&socket);
        if let Some(session) = socket.extensions.get::<AgentSession>() {
            dropped(&node, socket.id.to_string(), session.agent_id);
        }
    });
}

/// How long a drop waits before looking for the agent's other sockets: socketioxide takes a
/// closing socket out of its rooms only after its disconnect handler, so two tabs closing
/// together would each still see the other.
const DROP_SETTLE: Duration = Duration::from_millis(500);

/// A socket of `agent_id` closed. When, once closings settled, the agent has no socket left on
/// any node, the drop is recorded and the presence job submitted to run after the grace period.
/// When that cannot be told (a node did not answer, or this one is shutting down), nothing is
/// recorded: the agent's heartbeat stops, and the reconciler treats the silence as a drop.
fn dropped(node: &Node, socket_id: String, agent_id: i64) {
    let state = node.clone();
    tokio::spawn(async move {
        tokio::time::sleep(DROP_SETTLE.min(state.settings.presence_grace() / 4)).await;
        let Some(sockets) = state.push.sockets_in(AGENTS, room::agent(agent_id)).await else {
            return;
        };
        if sockets.iter().any(|id| *id != socket_id) {
            return;
        }
        let now = Utc::now().trunc_subsecs(6);
        let recorded = agents::Entity::update_many()
            .col_expr(agents::Column::DisconnectedAt, Expr::value(now))
            .col_expr(agents::Column::LastSeenAt, Expr::value(now))
            .filter(agents::Column::Id.eq(agent_id))
            .exec(&state.db)
            .await;
        if let Err(err) = recorded {
            tracing::warn!(agent_id, %err, "could not record a disconnect; the reconciler will notice the silence");
            return;
        }
        let job = AgentDisconnected {
            agent_id,
            disconnected_at: now,
        };
        if let Err(err) = state
            .jobs
            .submit_after(job, state.settings.presence_grace())
            .await
        {
            tracing::warn!(agent_id, %err, "presence job not submitted; the reconciler will notice the silence");
        }
    });
}
