//! The grammar of `tetherctl alerts …`: the org's alerts (list, watch) and alert rules (list,
//! create, delete).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{ObjectFormat, ObjectOutput, parse_duration};

/// `alerts …`
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts: firing ones (newest first), then resolved ones.
    #[command(visible_alias = "ls")]
    List(ListAlertsArgs),

    /// Print the firing alerts, then every alert that fires or resolves, until interrupted.
    Watch(WatchAlertsArgs),

    /// List, create and delete alert rules (viewers list; operators create and delete).
    #[command(subcommand)]
    Rules(AlertRulesCommand),
}

/// `alerts list`
#[derive(Debug, Clone, Args)]
pub struct ListAlertsArgs {
    /// Only firing or only resolved alerts
    #[arg(long, value_enum)]
    pub state: Option<AlertStateArg>,

    /// Only this rule's alerts
    #[arg(long)]
    pub rule: Option<String>,

    /// At most this many (the server caps it at 1000)
    #[arg(long, default_value_t = 100)]
    pub limit: u32,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `alerts watch`
#[derive(Debug, Clone, Args)]
pub struct WatchAlertsArgs {
    /// Stop after this many events (the `synced` marker aside)
    #[arg(long)]
    pub max_events: Option<u64>,

    /// Output format (`json`: one JSON object per line, `{"kind":"synced"}` after the firing
    /// alerts)
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `alerts rules …`
#[derive(Debug, Subcommand)]
pub enum AlertRulesCommand {
    /// List the org's alert rules (webhook secrets are never shown).
    #[command(visible_alias = "ls")]
    List(ObjectOutput),

    /// Create an alert rule.
    Create(Box<CreateAlertRuleArgs>),

    /// Delete an alert rule made with `create`; its firing alerts resolve.
    Delete(DeleteAlertRuleArgs),
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuleKindArg {
    /// An agent stale or offline for --for
    Offline,
    /// An agent whose health is critical for --for
    Critical,
    /// The online share of the selected agents below --min-online-ratio for --for
    OnlineRatio,
}

/// Which alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlertStateArg {
    Firing,
    Resolved,
}

/// The body webhooks receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WebhookFormatArg {
    /// Alertmanager's webhook payload (version 4)
    Alertmanager,
    /// Tether's JSON
    Json,
}

/// `alerts rules create NAME`
#[derive(Debug, Clone, Args)]
pub struct CreateAlertRuleArgs {
    /// Rule name ([a-z0-9-], unique in the org)
    pub name: String,

    /// What the rule watches
    #[arg(long, value_enum)]
    pub kind: RuleKindArg,

    /// Label selector of the agents it watches (`k=v,k!=v,k,!k`; default: every agent)
    #[arg(short = 'l', long = "selector", default_value = "")]
    pub selector: String,

    /// How long the condition must hold before the alert fires, e.g. 5m
    #[arg(long = "for", value_parser = parse_duration)]
    pub hold: Duration,

    /// For `--kind online-ratio`: the ratio (0 to 1) below which it fires
    #[arg(long)]
    pub min_online_ratio: Option<f64>,

    /// Webhook URL (http:// or https://); default: the org's webhook, if the server has one
    #[arg(long)]
    pub webhook: Option<String>,

    /// Body the webhook receives
    #[arg(long, value_enum, default_value_t = WebhookFormatArg::Alertmanager)]
    pub webhook_format: WebhookFormatArg,

    /// File holding the secret that signs each body (X-Tether-Signature, HMAC-SHA256)
    #[arg(long, value_name = "PATH")]
    pub webhook_secret_file: Option<PathBuf>,

    /// The `summary` annotation of its alerts
    #[arg(long, default_value = "")]
    pub summary: String,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `alerts rules delete NAME`
#[derive(Debug, Clone, Args)]
pub struct DeleteAlertRuleArgs {
    /// Rule name
    pub name: String,
}
