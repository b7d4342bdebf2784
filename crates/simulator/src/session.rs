//! One scripted charge point session for manual testing: every frame is printed.
//!
//! Without a script it boots, reports its connectors, and runs one whole charging
//! session (authorize, start, meter values, stop). A script file replaces that with its
//! own CALLs, one `["Action", {payload}]` per line. With `--stay` it then keeps the
//! connection, sends heartbeats and answers the central system's commands until Ctrl-C; a
//! remote start runs a charging session, a reset reconnects and boots again.

use std::{io::Write, path::Path, time::Duration};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use ocpp::{Frame, OcppVersion};
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    answers::{self, Configuration, FollowUp, Trigger},
    behaviour::{Behaviour, Outgoing, Scenario},
    connect::{Connector, Socket},
    frames,
    payloads::{self, Identity},
    version,
};

/// What the session does.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The charge point id.
    pub id: String,
    /// Its OCPP version.
    pub version: OcppVersion,
    /// CALLs to send instead of the built-in charging session.
    pub script: Option<Vec<(String, Value)>>,
    /// Keep the connection after the script, answering commands.
    pub stay: bool,
    /// How long to wait for each answer.
    pub call_timeout: Duration,
    /// Meter readings in the built-in charging session.
    pub meter_values: u32,
    /// Vendor, model, firmware.
    pub identity: Identity,
}

/// What happened, for the exit status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionReport {
    /// CALLs sent.
    pub sent: u64,
    /// CALLRESULTs received.
    pub answered: u64,
    /// CALLERRORs or timeouts.
    pub failed: u64,
}

/// Reads a script: one `["Action", {payload}]` per line; blank lines and `#` comments skipped.
pub fn read_script(path: &Path) -> anyhow::Result<Vec<(String, Value)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--script {}: cannot read", path.display()))?;
    let mut calls = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let where_ = || format!("--script {} line {}", path.display(), number + 1);
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", where_()))?;
        match value {
            Value::Array(items)
                if items.len() == 2 && items[0].is_string() && items[1].is_object() =>
            {
                let action = items[0].as_str().unwrap_or_default().to_owned();
                calls.push((action, items[1].clone()));
            }
            _ => anyhow::bail!("{}: expected [\"Action\", {{payload}}]", where_()),
        }
    }
    Ok(calls)
}

/// Runs the session, printing every frame to `out`.
pub async fn run(
    connector: &Connector,
    options: &SessionOptions,
    out: &mut (impl Write + Send),
) -> anyhow::Result<SessionReport> {
    let mut session = Session::new(options, out);
    let mut socket = session.open(connector).await?;
    session.boot(&mut socket).await?;
    match &options.script {
        Some(script) => {
            for (action, payload) in script {
                session.call(&mut socket, action, payload.clone()).await?;
                session.carry_out_deferred(&mut socket).await?;
            }
        }
        None => session.charging_session(&mut socket).await?,
    }
    if options.stay {
        session.stay(connector, socket).await?;
    } else {
        let _ = socket.close(None).await;
    }
    Ok(session.report)
}

struct Session<'a, W> {
    options: &'a SessionOptions,
    out: &'a mut W,
    report: SessionReport,
    next_id: u64,
    configuration: Configuration,
    behaviour: Behaviour,
    heartbeat: Duration,
    /// What commands asked for while a CALL of ours was waiting for its answer.
    deferred: Vec<FollowUp>,
    /// A Reset asked for a reboot, carried out by `--stay` (a session without it ends).
    reboot_requested: bool,
}

/// What a wait for an answer saw.
enum Waited {
    Answer(Option<Value>),
    FollowUp(FollowUp),
}

/// What one received frame means to the session.
enum Received {
    /// The answer to the CALL being waited for: its payload, or none after a CALLERROR.
    Answer(Option<Value>),
    /// A CALL of the central system's: the answer to send, and what the CALL asks for once
    /// it is answered.
    Call(String, Option<FollowUp>),
    /// Nothing to do (what was wrong with it, if anything, is printed).
    Nothing,
}

impl<'a, W: Write + Send> Session<'a, W> {
    fn new(options: &'a SessionOptions, out: &'a mut W) -> Self {
        Session {
            options,
            out,
            report: SessionReport::default(),
            next_id: 0,
            configuration: Configuration::new(options.version, 1),
            behaviour: Behaviour::new(
                options.version,
                Scenario::Charging,
                1,
                options.meter_values,
                &options.id,
                "SIMTAG01".into(),
            ),
            heartbeat: Duration::from_secs(300),
            deferred: Vec::new(),
            reboot_requested: false,
        }
    }

    async fn open(&mut self, connector: &Connector) -> anyhow::Result<Socket> {
        let url = connector.url_of(&self.options.id);
        self.print(&format!(
            "connecting to {url} as OCPP {}",
            version::number(self.options.version)
        ));
        let socket = connector
            .connect(&self.options.id, self.options.version, 0)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        self.print("connected");
        Ok(socket)
    }

    async fn boot(&mut self, socket: &mut Socket) -> anyhow::Result<()> {
        let payload = payloads::boot_notification(
            self.options.version,
            &self.options.identity,
            "SN-SESSION",
            "PowerUp",
        );
        let answer = self.call(socket, "BootNotification", payload).await?;
        let (interval, status) = answer.as_ref().map_or((None, None), payloads::boot_answer);
        if status != Some("Accepted") {
            anyhow::bail!("BootNotification was not accepted (status {status:?})");
        }
        if let Some(interval) = interval.filter(|interval| *interval > 0) {
            self.heartbeat = Duration::from_secs(interval);
        }
        for Outgoing {
            action, payload, ..
        } in self.behaviour.after_boot()
        {
            self.call(socket, action, payload).await?;
        }
        Ok(())
    }

    /// One whole charging session, from plugging in to unplugging.
    async fn charging_session(&mut self, socket: &mut Socket) -> anyhow::Result<()> {
        loop {
            let message = self.behaviour.next_message();
            let purpose = message.purpose;
            let answer = self.call(socket, message.action, message.payload).await?;
            self.behaviour.answered(purpose, answer.as_ref());
            self.carry_out_deferred(socket).await?;
            if self.behaviour.is_idle() || self.reboot_requested {
                return Ok(());
            }
        }
    }

    /// Sends a CALL and waits for its answer, answering the central system meanwhile.
    async fn call(
        &mut self,
        socket: &mut Socket,
        action: &str,
        payload: Value,
    ) -> anyhow::Result<Option<Value>> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let frame = frames::call(&id, action, &payload);
        self.print(&format!("> {frame}"));
        socket
            .send(Message::text(frame))
            .await
            .context("send failed")?;
        self.report.sent += 1;
        let deadline = Instant::now() + self.options.call_timeout;
        loop {
            match self.wait(socket, Some((&id, deadline))).await? {
                Waited::Answer(answer) => return Ok(answer),
                // One CALL at a time: what a command asks for waits for this answer.
                Waited::FollowUp(follow_up) => self.deferred.push(follow_up),
            }
        }
    }

    /// Does what commands asked for while a CALL was waiting: sends triggered messages,
    /// notes remote starts and stops for the charging session, and a reboot for `--stay`.
    async fn carry_out_deferred(&mut self, socket: &mut Socket) -> anyhow::Result<()> {
        while !self.deferred.is_empty() {
            for follow_up in std::mem::take(&mut self.deferred) {
                match follow_up {
                    FollowUp::StartTransaction { id_tag } => self.behaviour.remote_start(id_tag),
                    FollowUp::StopTransaction => self.behaviour.remote_stop(),
                    FollowUp::Reboot => self.reboot_requested = true,
                    FollowUp::Send(trigger) => self.send_triggered(socket, trigger).await?,
                }
            }
        }
        Ok(())
    }

    async fn send_triggered(
        &mut self,
        socket: &mut Socket,
        trigger: Trigger,
    ) -> anyhow::Result<()> {
        let (action, payload) = match trigger {
            Trigger::BootNotification => (
                "BootNotification",
                payloads::boot_notification(
                    self.options.version,
                    &self.options.identity,
                    "SN-SESSION",
                    "Triggered",
                ),
            ),
            Trigger::Heartbeat => ("Heartbeat", payloads::heartbeat()),
            Trigger::StatusNotification => {
                for message in self.behaviour.after_boot() {
                    self.call(socket, message.action, message.payload).await?;
                }
                return Ok(());
            }
            Trigger::MeterValues => {
                let message = self.behaviour.meter_values_now();
                (message.action, message.payload)
            }
        };
        self.call(socket, action, payload).await?;
        Ok(())
    }

    /// Reads frames until the answer to `waiting` arrives (or its deadline passes), or, when
    /// not waiting, until a command asks for something.
    async fn wait(
        &mut self,
        socket: &mut Socket,
        waiting: Option<(&str, Instant)>,
    ) -> anyhow::Result<Waited> {
        loop {
            let deadline = waiting.map(|(_, at)| at);
            let frame = tokio::select! {
                frame = socket.next() => frame,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.report.failed += 1;
                    self.print("! no answer in time");
                    return Ok(Waited::Answer(None));
                }
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(close))) => {
                    anyhow::bail!("the central system closed the connection: {close:?}")
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error).context("connection failed"),
                None => anyhow::bail!("the connection ended"),
            };
            self.print(&format!("< {text}"));
            match self.take_in(&text, waiting.map(|(pending, _)| pending)) {
                Received::Answer(answer) => return Ok(Waited::Answer(answer)),
                Received::Nothing => {}
                Received::Call(reply, follow_up) => {
                    self.print(&format!("> {reply}"));
                    socket
                        .send(Message::text(reply))
                        .await
                        .context("send failed")?;
                    if let Some(follow_up) = follow_up {
                        return Ok(Waited::FollowUp(follow_up));
                    }
                }
            }
        }
    }

    /// Takes in one text frame while the CALL with id `waiting`, if any, waits for its answer.
    fn take_in(&mut self, text: &str, waiting: Option<&str>) -> Received {
        let frame = match Frame::decode(text, self.options.version) {
            Ok(frame) => frame,
            Err(error) => {
                self.print_malformed(&error);
                return Received::Nothing;
            }
        };
        match frame {
            Frame::CallResult {
                message_id,
                payload,
            } => {
                if waiting != Some(message_id.as_str()) {
                    self.print("! an answer to no pending CALL");
                    return Received::Nothing;
                }
                match frames::payload(&payload) {
                    Ok(payload) => {
                        self.report.answered += 1;
                        Received::Answer(Some(payload))
                    }
                    Err(error) => {
                        self.print_malformed(&error);
                        Received::Nothing
                    }
                }
            }
            Frame::CallError(error) => {
                if waiting != Some(error.message_id.as_str()) {
                    self.print("! an error for no pending CALL");
                    return Received::Nothing;
                }
                self.report.failed += 1;
                self.print(&format!(
                    "! CALLERROR {}: {}",
                    error.error_code, error.description
                ));
                Received::Answer(None)
            }
            // 2.1: the central system could not use our answer to its CALL. That CALL is
            // over, so nothing of ours failed, but it is a problem to show.
            Frame::CallResultError(error) => {
                self.print(&format!(
                    "! CALLRESULTERROR for our answer to {}: {}: {}",
                    error.message_id, error.error_code, error.description
                ));
                Received::Nothing
            }
            // 2.1: a SEND expects no answer, and no SEND asks a charge point to do anything
            // the simulator models. The frame is printed already.
            Frame::Send { .. } => Received::Nothing,
            Frame::Call {
                message_id,
                action,
                payload,
            } => {
                let payload = match frames::payload(&payload) {
                    Ok(payload) => payload,
                    Err(error) => {
                        self.print_malformed(&error);
                        return Received::Nothing;
                    }
                };
                let (answer, follow_up) = answers::answer(
                    self.options.version,
                    &action,
                    &payload,
                    &mut self.configuration,
                );
                Received::Call(
                    frames::answer(&message_id, &answer, self.options.version),
                    follow_up,
                )
            }
        }
    }

    /// Keeps the connection until Ctrl-C: heartbeats, answers, and what commands ask for.
    async fn stay(&mut self, connector: &Connector, mut socket: Socket) -> anyhow::Result<()> {
        self.print(&format!(
            "staying connected (heartbeat every {} s); Ctrl-C ends",
            self.heartbeat.as_secs()
        ));
        let mut next_heartbeat = Instant::now() + self.heartbeat;
        loop {
            let waited = tokio::select! {
                waited = self.wait(&mut socket, None) => waited?,
                _ = tokio::time::sleep_until(next_heartbeat) => {
                    next_heartbeat = Instant::now() + self.heartbeat;
                    self.call(&mut socket, "Heartbeat", payloads::heartbeat()).await?;
                    continue;
                }
                _ = tokio::signal::ctrl_c() => {
                    let _ = socket.close(None).await;
                    return Ok(());
                }
            };
            let Waited::FollowUp(follow_up) = waited else {
                continue;
            };
            self.deferred.push(follow_up);
            self.carry_out_deferred(&mut socket).await?;
            if !self.behaviour.is_idle() && !self.reboot_requested {
                self.charging_session(&mut socket).await?;
            }
            if std::mem::take(&mut self.reboot_requested) {
                self.print("reset: rebooting");
                let _ = socket.close(None).await;
                self.behaviour.reboot();
                socket = self.open(connector).await?;
                self.boot(&mut socket).await?;
            }
        }
    }

    fn print_malformed(&mut self, error: &dyn std::fmt::Display) {
        self.print(&format!(
            "! malformed frame from the central system: {error}"
        ));
    }

    fn print(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(version: OcppVersion) -> SessionOptions {
        SessionOptions {
            id: "CP-1".into(),
            version,
            script: None,
            stay: false,
            call_timeout: Duration::from_secs(30),
            meter_values: 1,
            identity: Identity::default(),
        }
    }

    #[test]
    fn types_5_and_6_are_shown_but_neither_malformed_nor_the_answer() {
        let options = options(OcppVersion::V21);
        let mut out = Vec::new();
        let mut session = Session::new(&options, &mut out);
        let taken = session.take_in(r#"[5,"42","FormatViolation","bad answer",{}]"#, Some("1"));
        assert!(matches!(taken, Received::Nothing));
        let taken = session.take_in(r#"[6,"43","NotifyPeriodicEventStream",{}]"#, Some("1"));
        assert!(matches!(taken, Received::Nothing));
        let taken = session.take_in(r#"[3,"1",{"status":"Accepted"}]"#, Some("1"));
        assert!(
            matches!(taken, Received::Answer(Some(ref payload)) if payload["status"] == "Accepted")
        );
        let report = session.report;
        let printed = String::from_utf8(out).unwrap();
        assert_eq!(
            printed,
            "! CALLRESULTERROR for our answer to 42: FormatViolation: bad answer\n"
        );
        assert_eq!((report.answered, report.failed), (1, 0));
    }

    #[test]
    fn a_call_error_fails_the_call_and_garbage_is_malformed() {
        let options = options(OcppVersion::V16);
        let mut out = Vec::new();
        let mut session = Session::new(&options, &mut out);
        let taken = session.take_in(r#"[5,"42","FormatViolation","",{}]"#, Some("1"));
        assert!(matches!(taken, Received::Nothing));
        let taken = session.take_in(r#"[4,"1","NotSupported","no",{}]"#, Some("1"));
        assert!(matches!(taken, Received::Answer(None)));
        let report = session.report;
        let printed = String::from_utf8(out).unwrap();
        assert!(
            printed.starts_with("! malformed frame from the central system: message type 5"),
            "{printed}"
        );
        assert!(
            printed.ends_with("! CALLERROR NotSupported: no\n"),
            "{printed}"
        );
        assert_eq!(report.failed, 1);
    }
}
