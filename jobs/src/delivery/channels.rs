//! The notification channels besides Socket.IO, as a process configures them: webhooks (always
//! on) and e-mail (on when an SMTP server is configured). One value per process, shared by the
//! fan-out and the delivery jobs (the `fanout`, `webhook` and `email` modules beside this one).

use std::{sync::Arc, time::Duration};

use lettre::{AsyncSmtpTransport, Tokio1Executor, message::Mailbox};

/// How one channel retries: `attempts` in all, waiting `backoff` after the first failure and
/// twice as long after each next one (at most [`MAX_BACKOFF`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Attempts before a delivery is dead (at least 1).
    pub attempts: u32,
    /// Wait after the first failed attempt.
    pub backoff: Duration,
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

impl Retries {
    /// The wait after the `attempt`-th failed attempt (1-based): exponential, capped.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(MAX_BACKOFF)
    }
}

/// What a process needs to configure its channels (from the root crate's settings).
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// Allow webhook targets on loopback, private, link-local or unspecified addresses.
    pub webhook_allow_private: bool,
    /// Webhook retries.
    pub webhook_retries: Retries,
    /// Timeout of one webhook call, from connect to the end of the (bounded) response.
    pub webhook_timeout: Duration,
    /// `smtp://…` or `smtps://…`; `None` turns e-mail off.
    pub smtp_url: Option<String>,
    /// The sender address; the account's name is its display name.
    pub email_from: String,
    /// E-mail retries.
    pub email_retries: Retries,
    /// How long delivered and dead rows are kept (they hold copies of what was sent).
    pub delivery_retention: Duration,
    /// The window of one SLA digest e-mail (see `fanout`).
    pub sla_digest: Duration,
}

/// The configured channels of this process; cheap to clone.
#[derive(Clone)]
pub struct Channels(Arc<Inner>);

struct Inner {
    webhook_allow_private: bool,
    webhook_retries: Retries,
    http: reqwest::Client,
    mailer: Option<Mailer>,
    email_retries: Retries,
    delivery_retention: Duration,
    sla_digest: Duration,
}

/// The SMTP transport (a connection pool) and the sender address.
#[derive(Clone)]
pub(crate) struct Mailer {
    pub(crate) transport: AsyncSmtpTransport<Tokio1Executor>,
    pub(crate) from: lettre::Address,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the SMTP URL: it may carry a password.
        f.debug_struct("Channels")
            .field("webhook_allow_private", &self.0.webhook_allow_private)
            .field("email", &self.0.mailer.is_some())
            .finish()
    }
}

/// A channel setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The SMTP URL does not parse (the URL itself is not repeated: it may hold a password).
    #[error("SMTP_URL is not a valid smtp:// or smtps:// URL: {0}")]
    SmtpUrl(String),
    /// The sender address does not parse.
    #[error("SWITCHBOARD_EMAIL_FROM is not an e-mail address: {0}")]
    From(String),
    /// The HTTP client could not be built (TLS set-up).
    #[error("building the webhook HTTP client: {0}")]
    Http(String),
}

impl Channels {
    /// Builds the channels; says once whether e-mail is on.
    pub fn new(settings: &ChannelSettings) -> Result<Self, ChannelError> {
        let http = super::guard::client(settings.webhook_allow_private, settings.webhook_timeout)
            .map_err(|err| ChannelError::Http(err.to_string()))?;
        let mailer =
            match &settings.smtp_url {
                None => {
                    tracing::info!("e-mail is off: SMTP_URL is not set");
                    None
                }
                Some(url) => {
                    let from: lettre::Address = settings.email_from.parse().map_err(
                        |err: lettre::address::AddressError| ChannelError::From(err.to_string()),
                    )?;
                    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                        .map_err(|err| ChannelError::SmtpUrl(err.to_string()))?
                        .timeout(Some(Duration::from_secs(15)))
                        .build();
                    tracing::info!(from = %from, "e-mail is on");
                    Some(Mailer { transport, from })
                }
            };
        Ok(Self(Arc::new(Inner {
            webhook_allow_private: settings.webhook_allow_private,
            webhook_retries: settings.webhook_retries,
            http,
            mailer,
            email_retries: settings.email_retries,
            delivery_retention: settings.delivery_retention,
            sla_digest: settings.sla_digest.max(Duration::from_secs(1)),
        })))
    }

    /// Webhooks only, with defaults: for contexts that send nothing (tools, unit tests).
    pub fn webhooks_only(allow_private: bool) -> Result<Self, ChannelError> {
        Self::new(&ChannelSettings {
            webhook_allow_private: allow_private,
            webhook_retries: Retries {
                attempts: 8,
                backoff: Duration::from_secs(10),
            },
            webhook_timeout: Duration::from_secs(5),
            smtp_url: None,
            email_from: String::new(),
            email_retries: Retries {
                attempts: 5,
                backoff: Duration::from_secs(30),
            },
            delivery_retention: Duration::from_secs(7 * 24 * 3600),
            sla_digest: Duration::from_secs(300),
        })
    }

    /// Checks that the SMTP server accepts a connection (readiness). `None` when e-mail is off.
    pub async fn check_smtp(&self) -> Option<Result<(), String>> {
        let mailer = self.0.mailer.as_ref()?;
        Some(match mailer.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("the SMTP server refused the connection check".into()),
            Err(err) => Err(err.to_string()),
        })
    }

    /// True when e-mail is configured.
    pub fn email_on(&self) -> bool {
        self.0.mailer.is_some()
    }

    /// Whether webhook targets may be private addresses.
    pub fn webhook_allow_private(&self) -> bool {
        self.0.webhook_allow_private
    }

    pub(crate) fn webhook_retries(&self) -> Retries {
        self.0.webhook_retries
    }

    pub(crate) fn email_retries(&self) -> Retries {
        self.0.email_retries
    }

    pub(crate) fn delivery_retention(&self) -> Duration {
        self.0.delivery_retention
    }

    pub(crate) fn sla_digest(&self) -> Duration {
        self.0.sla_digest
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.0.http
    }

    pub(crate) fn mailer(&self) -> Option<&Mailer> {
        self.0.mailer.as_ref()
    }

    /// The sender of an account's mail: its name, at the configured address.
    pub(crate) fn sender(&self, account_name: &str) -> Option<Mailbox> {
        let mailer = self.0.mailer.as_ref()?;
        Some(Mailbox::new(
            Some(account_name.to_owned()),
            mailer.from.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let retries = Retries {
            attempts: 30,
            backoff: Duration::from_secs(10),
        };
        assert_eq!(retries.backoff_after(1), Duration::from_secs(10));
        assert_eq!(retries.backoff_after(2), Duration::from_secs(20));
        assert_eq!(retries.backoff_after(4), Duration::from_secs(80));
        assert_eq!(retries.backoff_after(30), MAX_BACKOFF);
    }
}
