import {
  aboutConnection,
  banner,
  details,
  localDateTime,
  pausedUntil,
  sortInbox,
  splitQuietHours,
  trailLine,
  type Row,
  type Status,
} from "./model";

const row = (id: string, over: Partial<Row> = {}): Row => ({
  id,
  channel: "doctor:d1:notifications",
  type: "lab_result_available",
  priority: "normal",
  title: `t${id}`,
  body: "",
  message: { type: "lab_result_available" },
  sent_at: "2026-11-23T10:00:00.000Z",
  received_at: Number(id),
  read_at: null,
  acked_at: null,
  ...over,
});

const status = (over: Partial<Status> = {}): Status => ({
  user: "d1",
  server: "http://relay",
  connection: "connected",
  detail: "",
  counts: { total: 0, unread: 0, unacked_critical: 0, last_received_at: null },
  gaps: [],
  alerts: { quiet_hours: null, sound: true, paused_until: null, show_details: false },
  ...over,
});

describe("the inbox order", () => {
  it("pins unacknowledged critical results on top, then newest first", () => {
    const sorted = sortInbox([row("1"), row("2", { priority: "critical" }), row("3"), row("4", { priority: "critical", acked_at: 5 })]);
    expect(sorted.map((r) => r.id)).toEqual(["2", "4", "3", "1"]);
  });
});

describe("the trail", () => {
  it("says what happened, by whom and more, at what time", () => {
    const at = "2026-12-01T08:30:12.000Z";
    expect(trailLine({ at, event: "acknowledged", user: "dr-backup", detail: "through its escalation" }, "UTC")).toBe(
      "08:30:12 Acknowledged by dr-backup (through its escalation)",
    );
    expect(trailLine({ at, event: "email_failed", detail: "attempt 1 of 4" }, "UTC")).toBe("08:30:12 Email failed (attempt 1 of 4)");
    expect(trailLine({ at, event: "something_new" }, "UTC")).toBe("08:30:12 something_new");
  });
});

describe("the banner", () => {
  it("warns of a device clock off by more than a minute, and never hides what matters more", () => {
    expect(banner(status(), null, 0, -120)).toEqual({
      kind: "warn",
      text: "This device's clock is 120 s ahead of the relay's — times shown may be wrong; set the clock",
    });
    const waiting = status({ counts: { total: 1, unread: 1, unacked_critical: 1, last_received_at: null } });
    expect(banner(waiting, null, 0, -120).kind).toBe("critical");
  });

  it("says when this device is not receiving critical results", () => {
    const since = new Date(2026, 10, 23, 10, 42).getTime();
    expect(banner(status(), { event: "not_receiving", offline_since: since }, since + 130000)).toEqual({
      kind: "critical",
      text: "You are not receiving critical results — offline since 10:42",
    });
  });

  it("says when (local time) and why it is offline, and when it retries", () => {
    const offline = new Date(2026, 10, 23, 10, 42).getTime();
    const b = banner(status(), { event: "reconnecting", in_ms: 8000, reason: "connection lost", offline_since: offline }, offline + 5000);
    expect(b).toEqual({ kind: "warn", text: "Offline since 10:42 — retrying in 8 s" });
  });

  it("never hides a history gap", () => {
    const b = banner(status({ gaps: [{ channel: "doctor:abc:notifications", since: "1-0", detected_at: 0 }] }), null, 0);
    expect(b.text).toBe("History gap on doctor:abc:notifications — some notifications may be missing");
  });

  it("puts critical results waiting before 'connected'", () => {
    const b = banner(status({ counts: { total: 3, unread: 1, unacked_critical: 1, last_received_at: null } }), null, 0);
    expect(b).toEqual({ kind: "critical", text: "1 critical result waiting for acknowledgement" });
    expect(banner(status(), { event: "connected", transport: "websocket" }, 0)).toEqual({ kind: "ok", text: "Connected" });
  });

  it("says until when non-critical alerts are paused", () => {
    const now = new Date(2026, 10, 23, 13, 5).getTime();
    const until = new Date(2026, 10, 23, 14, 5).getTime();
    const paused = status({ alerts: { quiet_hours: null, sound: true, paused_until: until, show_details: false } });
    expect(banner(paused, null, now)).toEqual({ kind: "ok", text: "Connected — non-critical alerts paused until 14:05" });
    expect(banner(paused, null, until).text).toBe("Connected");
    expect(pausedUntil(paused.alerts, until + 1)).toBeNull();
  });

  it("follows connection events only", () => {
    expect(aboutConnection({ event: "reconnecting", in_ms: 1, reason: "", offline_since: 0 })).toBe(true);
    expect(aboutConnection({ event: "alert_settings_changed", alerts: status().alerts })).toBe(false);
    expect(aboutConnection({ event: "alert_opened", channel: null, id: null })).toBe(false);
    expect(aboutConnection({ event: "signed_out" })).toBe(true);
  });

  it("asks to sign in again when the token is refused", () => {
    expect(banner(status(), { event: "sign_in_required", reason: "the token has expired" }, 0).kind).toBe("critical");
  });

  it("says so when the relay's certificate cannot be trusted", () => {
    const reason = "the relay's certificate for relay.example cannot be trusted (invalid peer certificate: UnknownIssuer)";
    const untrusted = { event: "untrusted" as const, reason };
    expect(aboutConnection(untrusted)).toBe(true);
    expect(banner(status(), untrusted, 0)).toEqual({ kind: "critical", text: `Not connected: ${reason}` });
  });

  it("never says connected while this device fails to store, whatever the connection does", () => {
    const failing = status({ connection: "failed", detail: "the inbox failed: database or disk is full; retrying in 4 s" });
    const connecting = { event: "connecting" as const, transport: "websocket" };
    expect(banner(failing, connecting, 0)).toEqual({
      kind: "critical",
      text: "Not receiving: the inbox failed: database or disk is full; retrying in 4 s",
    });
    const failed = { event: "failed" as const, reason: "the receiver stopped unexpectedly", retrying: false };
    expect(aboutConnection(failed)).toBe(true);
    expect(banner(status({ connection: "stopped" }), failed, 0).text).toBe("Not receiving: the receiver stopped unexpectedly");
  });
});

describe("the detail view", () => {
  it("shows a HealthHub payload's fields in words", () => {
    const critical = row("1", {
      message: { type: "critical_lab_result", patient_name: "Bob Wilson", test_type: "BMP", requires_review: true },
    });
    expect(details(critical)).toEqual([
      ["Patient", "Bob Wilson"],
      ["Test", "BMP"],
      ["Needs review", "Yes"],
      ["Sent", "2026-11-23 11:00"],
    ]);
  });

  it("shows the relay's UTC times in the person's time zone", () => {
    expect(localDateTime("2026-11-23T23:30:00.000Z")).toBe("2026-11-24 00:30");
    expect(localDateTime("2026-07-01T12:05:00Z")).toBe("2026-07-01 14:05");
    expect(localDateTime("not a time")).toBe("not a time");
  });
});

describe("the settings screen", () => {
  it("splits quiet hours for its two time inputs", () => {
    expect(splitQuietHours("22:00-07:00")).toEqual(["22:00", "07:00"]);
    expect(splitQuietHours(null)).toBeNull();
    expect(splitQuietHours("late")).toBeNull();
  });
});
