//! E-mail: the job that sends one delivery row over SMTP (lettre), and what each kind of mail
//! says. Kinds (chosen by the fan-out):
//! - `email.assigned`: a new conversation went to an agent who is not connected;
//! - `email.transcript`: the visitor's copy of a closed conversation (when its e-mail is known
//!   and an agent wrote in it: the address is not verified);
//! - `email.sla_digest`: the service levels an account's conversations broke in one window (to
//!   supervisors and admins; at most one per window each, listing at most [`DIGEST_LISTED`]);
//! - `email.sla_breached`: one conversation broke a service level (rows of earlier versions).
//!
//! Each mail has a plain-text and an HTML body, the account's name as the sender's display name,
//! and a Message-ID made from the delivery id, so a receiver can tell a resend from a new mail.

use std::{collections::HashMap, time::Duration};

use entity::{
    accounts, agents, conversations, deliveries,
    enums::{AuthorType, EventKind},
    events, visitors,
};
use lettre::{AsyncTransport, Message, message::MultiPart};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::Value;

pub use super::send::SendEmail;
use super::{
    deliveries::{Claim, Failed, abandon, claim, delivered, failed},
    send::Channel,
};
use crate::{Job, JobContext, JobError, RetryBudget};

/// A new conversation for an agent who is not connected.
pub const ASSIGNED: &str = "email.assigned";
/// The transcript to the visitor.
pub const TRANSCRIPT: &str = "email.transcript";
/// A service level broke (one mail per breach: rows written before digests).
pub const SLA_BREACHED: &str = "email.sla_breached";
/// The service levels broken in one window.
pub const SLA_DIGEST: &str = "email.sla_digest";

/// Conversations one digest lists at most (it counts the rest).
pub const DIGEST_LISTED: usize = 20;

/// Messages of a transcript at most (the rest is summarised in one line).
const TRANSCRIPT_MESSAGES: u64 = 500;

impl Job for SendEmail {
    const QUEUE: &'static str = "send-email";
    // Like webhooks: the SMTP server's failures are retried by the row's budget; apalis retries
    // only database failures around the send. An SMTP session times out after 15 s.
    const BUDGET: RetryBudget = RetryBudget {
        in_process: 3,
        deliveries: 5,
        backoff_min: Duration::from_millis(200),
        timeout: Duration::from_secs(60),
    };

    #[tracing::instrument(name = "job.send_email", skip_all, fields(delivery_id = self.delivery_id), err)]
    async fn run(self, ctx: &JobContext) -> Result<String, JobError> {
        let row = match claim(ctx, self.delivery_id, Channel::Email).await? {
            Claim::Go(row) => *row,
            Claim::Skip(why) => return Ok(why),
        };
        let Some(mailer) = ctx.channels.mailer() else {
            abandon(ctx, &row, "e-mail is off on the worker (no SMTP_URL)").await?;
            return Ok("e-mail off: dead".into());
        };
        let message = match compose(ctx, &row).await {
            Ok(Some(message)) => message,
            Ok(None) => {
                abandon(
                    ctx,
                    &row,
                    "nothing to send any more (a row it names is gone)",
                )
                .await?;
                return Ok("nothing to send: dead".into());
            }
            // A mail that cannot be written (a bad address, an unknown kind) never will be:
            // the row is dead, or it would stay pending and be resubmitted forever.
            Err(JobError::Permanent(why)) => {
                let retries = ctx.channels.email_retries();
                failed(ctx, &row, retries, &why, None, true).await?;
                return Ok(format!("{why}: dead"));
            }
            Err(err) => return Err(err),
        };
        match mailer.transport.send(message).await {
            Ok(_) => {
                delivered(ctx, &row, None).await?;
                Ok(format!("sent on attempt {}", row.attempts))
            }
            Err(err) => {
                // A 5xx reply will not change on retry (a refused recipient); anything else may.
                let permanent = err.is_permanent();
                let error = format!("SMTP: {err}");
                let retries = ctx.channels.email_retries();
                match failed(ctx, &row, retries, &error, None, permanent).await? {
                    Failed::Retry(wait) => Ok(format!(
                        "attempt {} failed ({error}); next in {} ms",
                        row.attempts,
                        wait.as_millis()
                    )),
                    Failed::Dead => Ok(format!("attempt {} failed ({error}); dead", row.attempts)),
                }
            }
        }
    }
}

/// The text of one mail.
struct Body {
    subject: String,
    text: String,
    html: String,
}

/// Renders the row's mail from the database; `None` when what it is about is gone.
async fn compose(ctx: &JobContext, row: &deliveries::Model) -> Result<Option<Message>, JobError> {
    let Some(account) = accounts::Entity::find_by_id(row.account_id)
        .one(&ctx.db)
        .await?
    else {
        return Ok(None);
    };
    let Some(recipient) = &row.recipient else {
        return Ok(None);
    };
    let body = if row.kind == SLA_DIGEST {
        match sla_digest(ctx, row).await? {
            Some(body) => body,
            None => return Ok(None),
        }
    } else {
        match about_a_conversation(ctx, row, &account.name).await? {
            Some(body) => body,
            None => return Ok(None),
        }
    };
    let Some(from) = ctx.channels.sender(&account.name) else {
        return Ok(None);
    };
    let to = recipient
        .parse()
        .map_err(|err| JobError::Permanent(format!("recipient address: {err}")))?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(body.subject)
        .message_id(Some(format!("<{}@switchboard>", row.delivery_key)))
        .date_now()
        .multipart(MultiPart::alternative_plain_html(body.text, body.html))
        .map_err(|err| JobError::Permanent(format!("building the message: {err}")))?;
    Ok(Some(message))
}

/// The body of a mail about one conversation; `None` when it is gone.
async fn about_a_conversation(
    ctx: &JobContext,
    row: &deliveries::Model,
    account: &str,
) -> Result<Option<Body>, JobError> {
    let conversation_id = row.payload["conversationId"].as_i64().unwrap_or_default();
    let Some(conversation) = conversations::Entity::find_by_id(conversation_id)
        .one(&ctx.db)
        .await?
        .filter(|c| c.account_id == row.account_id)
    else {
        return Ok(None);
    };
    let visitor = visitors::Entity::find_by_id(conversation.visitor_id)
        .one(&ctx.db)
        .await?;
    let visitor_name = visitor
        .as_ref()
        .and_then(|v| v.name.clone())
        .unwrap_or_else(|| "A visitor".to_owned());
    Ok(Some(match row.kind.as_str() {
        ASSIGNED => assigned(account, &conversation, &visitor_name, &row.payload),
        TRANSCRIPT => transcript(ctx, account, &conversation, &visitor_name).await?,
        SLA_BREACHED => sla_breached(&conversation, &visitor_name, &row.payload),
        other => return Err(JobError::Permanent(format!("unknown e-mail kind {other}"))),
    }))
}

/// The digest of the breaches added to the row (see `fanout`); `None` when it holds none. Read
/// again here: breaches are added until the first attempt claims the row, after the job read it.
async fn sla_digest(ctx: &JobContext, row: &deliveries::Model) -> Result<Option<Body>, JobError> {
    let Some(row) = deliveries::Entity::find_by_id(row.id).one(&ctx.db).await? else {
        return Ok(None);
    };
    let payload = &row.payload;
    let breaches = payload["breaches"].as_array().cloned().unwrap_or_default();
    if breaches.is_empty() {
        return Ok(None);
    }
    let more = payload["more"].as_u64().unwrap_or(0);
    let total = breaches.len() as u64 + more;
    let lines: Vec<String> = breaches
        .iter()
        .map(|b| {
            let id = b["conversationId"].as_i64().unwrap_or_default();
            let (limit, actual) = (
                b["limit"].as_i64().unwrap_or_default(),
                b["actual"].as_i64().unwrap_or_default(),
            );
            let what = match b["sla"].as_str() {
                Some("max_reassignments") => format!(
                    "reassigned {actual} times without a reply (the limit is {limit}): held at the head of the line"
                ),
                _ => format!("no agent answered within {limit} s (waited {actual} s)"),
            };
            format!("#{id}: {what}")
        })
        .collect();
    let window = format!(
        "from {} to {}",
        payload["windowStart"].as_str().unwrap_or("?"),
        payload["windowEnd"].as_str().unwrap_or("?")
    );
    let mut text = format!(
        "{total} conversation(s) broke their service level {window}:\n\n{}\n",
        lines.join("\n")
    );
    let mut html = format!(
        "<p>{total} conversation(s) broke their service level {}:</p><ul>{}</ul>",
        escape(&window),
        lines
            .iter()
            .map(|line| format!("<li>{}</li>", escape(line)))
            .collect::<String>()
    );
    if more > 0 {
        text.push_str(&format!("…and {more} more.\n"));
        html.push_str(&format!("<p>…and {more} more.</p>"));
    }
    Ok(Some(Body {
        subject: format!("SLA digest: {total} conversation(s) broke their service level"),
        text,
        html,
    }))
}

fn assigned(
    account: &str,
    conversation: &conversations::Model,
    visitor: &str,
    payload: &Value,
) -> Body {
    let agent = payload["agentName"].as_str().unwrap_or("there");
    let reason = payload["reason"].as_str().unwrap_or("");
    let id = conversation.id;
    Body {
        subject: format!("New conversation #{id} assigned to you"),
        text: format!(
            "Hello {agent},\n\n{visitor} is waiting in conversation #{id}, which {account} \
             assigned to you ({reason}) while you were not connected.\n\nOpen Switchboard to \
             answer.\n"
        ),
        html: format!(
            "<p>Hello {},</p><p>{} is waiting in conversation #{id}, which {} assigned to you \
             ({}) while you were not connected.</p><p>Open Switchboard to answer.</p>",
            escape(agent),
            escape(visitor),
            escape(account),
            escape(reason)
        ),
    }
}

fn sla_breached(conversation: &conversations::Model, visitor: &str, payload: &Value) -> Body {
    let sla = payload["sla"].as_str().unwrap_or("service level");
    let limit = payload["limit"].as_i64().unwrap_or_default();
    let actual = payload["actual"].as_i64().unwrap_or_default();
    let id = conversation.id;
    let what = match sla {
        "first_response" => format!("no agent answered within {limit} s (waited {actual} s)"),
        "max_reassignments" => {
            format!(
                "reassigned {actual} times (the limit is {limit}); it now waits at the head of the line"
            )
        }
        other => format!("{other}: limit {limit}, actual {actual}"),
    };
    Body {
        subject: format!("SLA breached: conversation #{id}"),
        text: format!("Conversation #{id} with {visitor} broke its service level: {what}.\n"),
        html: format!(
            "<p>Conversation #{id} with {} broke its service level: {}.</p>",
            escape(visitor),
            escape(&what)
        ),
    }
}

async fn transcript(
    ctx: &JobContext,
    account: &str,
    conversation: &conversations::Model,
    visitor: &str,
) -> Result<Body, JobError> {
    use sea_orm::QuerySelect;
    let messages = events::Entity::find()
        .filter(events::Column::ConversationId.eq(conversation.id))
        .filter(events::Column::Kind.eq(EventKind::Message))
        .order_by_asc(events::Column::Id)
        .limit(TRANSCRIPT_MESSAGES)
        .all(&ctx.db)
        .await?;
    let agent_ids: Vec<i64> = messages.iter().filter_map(|m| m.agent_id).collect();
    let names: HashMap<i64, String> = if agent_ids.is_empty() {
        HashMap::new()
    } else {
        agents::Entity::find()
            .filter(agents::Column::Id.is_in(agent_ids))
            .all(&ctx.db)
            .await?
            .into_iter()
            .map(|a| (a.id, a.name))
            .collect()
    };
    let mut text = format!("Your conversation with {account}\n\n");
    let mut html = format!(
        "<h2>Your conversation with {}</h2>\n<table>\n",
        escape(account)
    );
    for message in &messages {
        let who = match message.author_type {
            AuthorType::Visitor => visitor.to_owned(),
            AuthorType::Agent => message
                .agent_id
                .and_then(|id| names.get(&id).cloned())
                .unwrap_or_else(|| account.to_owned()),
            AuthorType::System => account.to_owned(),
        };
        let when = message.created_at.format("%Y-%m-%d %H:%M UTC");
        text.push_str(&format!("[{when}] {who}: {}\n", message.content));
        html.push_str(&format!(
            "<tr><td>{when}</td><th>{}</th><td>{}</td></tr>\n",
            escape(&who),
            escape(&message.content).replace('\n', "<br>")
        ));
    }
    if messages.len() as u64 == TRANSCRIPT_MESSAGES {
        text.push_str("(later messages are not included)\n");
        html.push_str("<tr><td colspan=\"3\">(later messages are not included)</td></tr>\n");
    }
    html.push_str("</table>\n");
    text.push_str("\nThank you for contacting us.\n");
    html.push_str("<p>Thank you for contacting us.</p>\n");
    Ok(Body {
        subject: format!("Your conversation with {account}"),
        text,
        html,
    })
}

/// Text made safe to place in HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_is_escaped() {
        assert_eq!(
            super::escape(r#"<b onclick="x">Tom & 'Jerry'</b>"#),
            "&lt;b onclick=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/b&gt;"
        );
    }
}
