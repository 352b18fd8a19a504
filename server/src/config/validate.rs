//! `Config::validate`: the relations between settings that each flag alone cannot check,
//! refused at start with the settings named, before anything is opened or bound.

use super::*;

impl Config {
    /// Checks the relations between settings that each flag alone cannot.
    ///
    /// # Errors
    ///
    /// Returns a message naming the offending settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.liveness;
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        for (name, value) in [
            ("heartbeat interval", l.heartbeat_interval),
            ("metrics interval", l.metrics_interval),
            ("stale-after", l.stale_after),
            ("offline-after", l.offline_after),
            ("fleet TTL", l.fleet_ttl),
            ("liveness tick", l.tick),
            ("alert interval", self.alerts.interval),
            ("webhook timeout", self.alerts.delivery.timeout),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be greater than zero"));
            }
        }
        if l.stale_after <= l.heartbeat_interval {
            return invalid(format!(
                "stale-after ({}) must be longer than the heartbeat interval ({}), or healthy \
                 agents would turn stale",
                humantime::format_duration(l.stale_after),
                humantime::format_duration(l.heartbeat_interval)
            ));
        }
        if l.offline_after <= l.stale_after {
            return invalid(format!(
                "offline-after ({}) must be longer than stale-after ({})",
                humantime::format_duration(l.offline_after),
                humantime::format_duration(l.stale_after)
            ));
        }
        if self.alerts.delivery.max_attempts == 0 || self.alerts.delivery.queue == 0 {
            return invalid("webhook attempts and queue must be at least one".to_owned());
        }
        if l.drain.reconnects_per_second == 0 {
            return invalid("the drain's reconnect rate must be greater than zero".to_owned());
        }
        if self.limits.max_message_bytes < 4096 {
            return invalid("max message size must be at least 4 KiB".to_owned());
        }
        let l = &self.limits;
        if l.stream_messages_per_second == 0
            || l.stream_message_burst == 0
            || l.token_requests_per_second == 0
            || l.token_request_burst == 0
            || l.max_header_list_bytes == 0
        {
            return invalid(
                "rate limits and the header list size must be greater than zero".to_owned(),
            );
        }
        if l.http2_stream_window < MIN_HTTP2_WINDOW
            || l.http2_connection_window < l.http2_stream_window
        {
            return invalid(format!(
                "the HTTP/2 stream window must be at least {MIN_HTTP2_WINDOW} bytes, and the \
                 connection window at least the stream window"
            ));
        }
        if l.reenroll_per_minute == 0 || l.reenroll_burst == 0 {
            return invalid(
                "the re-enrollment rate and burst must be greater than zero".to_owned(),
            );
        }
        if l.identity_conflict_window.is_zero() || l.identity_conflict_replacements == 0 {
            return invalid(
                "the identity conflict window and replacement count must be greater than zero"
                    .to_owned(),
            );
        }
        if l.max_reported_text_bytes == 0 {
            return invalid("the reported text size limit must be greater than zero".to_owned());
        }
        if self.limits.max_concurrent_streams == 0
            || self.limits.watch_buffer == 0
            || self.limits.max_watches_per_token == 0
            || self.limits.max_watches_per_org == 0
        {
            return invalid("stream and watch limits must be greater than zero".to_owned());
        }
        if self.limits.max_response_bytes < MIN_RESPONSE_BYTES
            || self.limits.watch_buffer_bytes < MIN_RESPONSE_BYTES
        {
            return invalid(format!(
                "the response size and the watch buffer must be at least {MIN_RESPONSE_BYTES} \
                 bytes, so that the largest valid agent fits"
            ));
        }
        if self
            .tls
            .as_ref()
            .is_some_and(|t| t.handshake_timeout.is_zero())
        {
            return invalid("TLS handshake timeout must be greater than zero".to_owned());
        }
        let c = &self.connections;
        if c.first_request_timeout.is_zero()
            || c.max_connections == Some(0)
            || c.max_connections_per_source == 0
            || c.max_tls_handshakes == 0
        {
            return invalid(
                "the first-request timeout and the connection and handshake limits must be \
                 greater than zero"
                    .to_owned(),
            );
        }
        let a = &self.admission;
        if a.hello_timeout.is_zero() || a.max_sessions_in_setup == 0 || a.retry_after.is_zero() {
            return invalid(
                "the Hello timeout, the sessions-in-setup limit and the busy retry delay must be \
                 greater than zero"
                    .to_owned(),
            );
        }
        if self.storage.min_report_interval > MAX_MIN_REPORT_INTERVAL {
            return invalid(format!(
                "the least interval between an agent's reports must be at most {} s (agents wait no longer)",
                MAX_MIN_REPORT_INTERVAL.as_secs()
            ));
        }
        if self.storage.max_report_interval > MAX_MIN_REPORT_INTERVAL {
            return invalid(format!(
                "the longest interval between an agent's reports must be at most {} s (agents wait no longer)",
                MAX_MIN_REPORT_INTERVAL.as_secs()
            ));
        }

        if self.storage.writer_max_batch == 0
            || self.storage.writer_queue == 0
            || self.storage.writer_control_queue == 0
            || self.storage.ingest_budget == 0
            || self.storage.session_reports_in_flight == 0
        {
            return invalid(
                "writer batch and queue sizes and the ingest budgets must be greater than zero"
                    .to_owned(),
            );
        }
        if u32::try_from(self.storage.ingest_budget).is_err() {
            return invalid(format!(
                "the ingest budget must be at most {} samples",
                u32::MAX
            ));
        }
        if self.storage.commit_stall_limit.is_zero() {
            return invalid("the store stall limit must be greater than zero".to_owned());
        }
        self.commands.validate()?;
        self.events.validate()?;
        let st = &self.storage;
        for (name, value) in [
            ("metrics retention", st.metrics_retention),
            ("5-minute rollup retention", st.rollup_5m_retention),
            ("1-hour rollup retention", st.rollup_1h_retention),
            ("retention interval", st.retention_interval),
            ("compaction interval", st.compaction_interval),
            ("checkpoint interval", st.checkpoint_interval),
            ("chunk span", st.series.chunk_max_span),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be greater than zero"));
            }
        }
        if st.checkpoint_log_bytes == 0 {
            return invalid(
                "the log size that brings a checkpoint must be greater than zero".to_owned(),
            );
        }
        if st.series.head_max_samples == 0 || st.series.head_max_bytes < MIN_HEAD_MAX_BYTES {
            return invalid(format!(
                "a head must hold at least one sample and {MIN_HEAD_MAX_BYTES} bytes"
            ));
        }
        let h = &self.health;
        for (name, warn, crit) in [
            ("cpu", h.cpu_warning, h.cpu_critical),
            ("memory", h.memory_warning, h.memory_critical),
            ("disk", h.disk_warning, h.disk_critical),
        ] {
            if !(0.0..=100.0).contains(&warn) || !(0.0..=100.0).contains(&crit) || warn > crit {
                return invalid(format!(
                    "{name} health thresholds must satisfy 0 <= warning <= critical <= 100"
                ));
            }
        }
        Ok(())
    }
}
