// What the window shows, computed from the receiver's data: no DOM and no Tauri here, so it is
// tested as plain functions.

export type Priority = "low" | "normal" | "high" | "critical";

export interface Row {
  id: string;
  channel: string;
  type: string;
  priority: Priority;
  title: string;
  body: string;
  message: Record<string, unknown>;
  sent_at: string;
  received_at: number;
  read_at: number | null;
  acked_at: number | null;
}

export interface Gap {
  channel: string;
  since: string | null;
  detected_at: number;
}

/** The person's alert settings (the receiver's `AlertSettings`). */
export interface AlertSettings {
  /** "HH:MM-HH:MM", local time, may wrap midnight; null for none. */
  quiet_hours: string | null;
  /** Whether non-critical alerts make a sound (critical results always do). */
  sound: boolean;
  /** Until when (Unix ms) non-critical alerts are paused. */
  paused_until: number | null;
  /** Whether alerts show what a notification says (names, results); off, only what kind it is. */
  show_details: boolean;
}

/** One event of a notification's trail, as the relay keeps it. */
export interface TrailEvent {
  at: string;
  event: string;
  user?: string;
  device?: string;
  detail?: string;
}

/** A notification's state and trail (`GET /v1/messages/{channel}/{id}`). */
export interface Trail {
  state: "open" | "acknowledged" | "expired";
  acknowledged_by: string | null;
  trail: TrailEvent[];
}

const TRAIL_WORDS: Record<string, string> = {
  published: "Published",
  delivered: "Delivered",
  displayed: "Alerted",
  read: "Read",
  acknowledged: "Acknowledged",
  declined: "Declined",
  repeated: "Sent again",
  escalated: "Escalated",
  email_sent: "Emailed",
  email_failed: "Email failed",
  no_device_online: "No device online",
};

/** A trail event in words: "08:30:12 Acknowledged by dr-backup (through its escalation …)". */
export function trailLine(event: TrailEvent, timeZone?: string): string {
  const time = new Date(event.at).toLocaleTimeString([], { hour12: false, timeZone });
  const what = TRAIL_WORDS[event.event] ?? event.event;
  const who = event.user ? ` by ${event.user}` : "";
  const detail = event.detail ? ` (${event.detail})` : "";
  return `${time} ${what}${who}${detail}`;
}

/** Where the connection stands (the receiver's ConnectionState). */
export type ConnectionState = "never_started" | "connected" | "reconnecting" | "sign_in_required" | "untrusted" | "stopped" | "failed";

export interface Status {
  user: string | null;
  server: string | null;
  connection: ConnectionState;
  detail: string;
  counts: { total: number; unread: number; unacked_critical: number; last_received_at: number | null };
  gaps: Gap[];
  alerts: AlertSettings;
  /** Since when (Unix ms) this device has not been receiving critical results, if it is not. */
  not_receiving_since?: number | null;
}

/** What the settings screen shows; start_at_login is null where there is none (mobile). */
export interface SettingsView {
  server: string | null;
  user: string | null;
  alerts: AlertSettings;
  start_at_login: boolean | null;
}

export type WardlineEvent =
  | { event: "connecting"; transport: string }
  | { event: "connected"; transport: string }
  | { event: "reconnecting"; in_ms: number; reason: string; offline_since: number }
  | { event: "gap_detected"; channel: string; since: string | null }
  | { event: "notification_stored"; notification: Row }
  | { event: "sign_in_required"; reason: string }
  | { event: "untrusted"; reason: string }
  | { event: "failed"; reason: string; retrying: boolean }
  | { event: "acknowledged"; channel: string; ids: string[] }
  | { event: "signed_out" }
  | { event: "alert_opened"; channel: string | null; id: string | null }
  | { event: "alert_settings_changed"; alerts: AlertSettings }
  | { event: "declined"; channel: string; ids: string[] }
  | { event: "reminder"; notification: Row; repeat: number }
  | { event: "handled_elsewhere"; kind: string; channel: string; ids: string[]; user: string; device: string | null }
  | { event: "not_receiving"; offline_since: number }
  | { event: "receiving_again" }
  | { event: "clock_skew"; relay_ahead_s: number };

/** Whether an event says something about the connection (what the banner follows). */
export const aboutConnection = (event: WardlineEvent): boolean =>
  ["connecting", "connected", "reconnecting", "gap_detected", "sign_in_required", "untrusted", "failed", "signed_out", "not_receiving", "receiving_again"].includes(
    event.event,
  );

/** The key a notification is acknowledged or read by. */
export const key = (row: Row): string => `${row.channel}/${row.id}`;

/** Critical notifications not yet acknowledged first (newest first), then the rest, newest first. */
export function sortInbox(rows: Row[]): Row[] {
  const pinned = (r: Row) => r.priority === "critical" && r.acked_at === null;
  return [...rows].sort((a, b) => Number(pinned(b)) - Number(pinned(a)) || b.received_at - a.received_at);
}

/** HH:MM in local time. */
export const time = (ms: number) => {
  const d = new Date(ms);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
};

/** A time the relay gave (ISO 8601, in UTC) as YYYY-MM-DD HH:MM in the person's own time zone; the
 * text as given when it is not a time. */
export function localDateTime(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${time(d.getTime())}`;
}

/** "until HH:MM" while non-critical alerts are paused, else null. */
export function pausedUntil(alerts: AlertSettings, now: number): string | null {
  return alerts.paused_until !== null && alerts.paused_until > now ? time(alerts.paused_until) : null;
}

/** Splits "HH:MM-HH:MM" for two time inputs; null when there are no quiet hours. */
export function splitQuietHours(text: string | null): [string, string] | null {
  const m = text?.match(/^(\d{2}:\d{2})-(\d{2}:\d{2})$/);
  return m ? [m[1], m[2]] : null;
}

export interface Banner {
  kind: "ok" | "warn" | "critical";
  text: string;
}

/** The status banner: always the truth about the connection, gaps and critical results waiting,
 * followed by a pause of alerts if one runs. */
export function banner(status: Status, last: WardlineEvent | null, now: number, relayAheadS: number | null = null): Banner {
  const paused = pausedUntil(status.alerts, now);
  let b = connectionBanner(status, last);
  if (relayAheadS !== null && b.kind === "ok") {
    const way = relayAheadS > 0 ? "behind" : "ahead of";
    b = { kind: "warn", text: `This device's clock is ${Math.abs(relayAheadS)} s ${way} the relay's — times shown may be wrong; set the clock` };
  }
  return paused ? { kind: b.kind, text: `${b.text} — non-critical alerts paused until ${paused}` } : b;
}

function connectionBanner(status: Status, last: WardlineEvent | null): Banner {
  if (status.user === null) return { kind: "warn", text: "Not signed in" };
  if (last?.event === "sign_in_required") return { kind: "critical", text: `Sign-in required — ${last.reason}` };
  if (last?.event === "untrusted") return { kind: "critical", text: `Not connected: ${last.reason}` };
  // A failure of this device (a full disk) outlasts the reconnections it tries: until the receiver
  // says it stores again, nothing arrives.
  if (status.connection === "failed") return { kind: "critical", text: `Not receiving: ${status.detail}` };
  if (last?.event === "failed") return { kind: "critical", text: `Not receiving: ${last.reason}` };
  if (last?.event === "not_receiving")
    return { kind: "critical", text: `You are not receiving critical results — offline since ${time(last.offline_since)}` };

  if (last?.event === "reconnecting") {
    const seconds = Math.max(0, Math.round(last.in_ms / 1000));
    return { kind: "warn", text: `Offline since ${time(last.offline_since)} — retrying in ${seconds} s` };
  }
  if (status.gaps.length > 0) {
    const channels = [...new Set(status.gaps.map((g) => g.channel))].join(", ");
    return { kind: "warn", text: `History gap on ${channels} — some notifications may be missing` };
  }
  if (status.counts.unacked_critical > 0) {
    const n = status.counts.unacked_critical;
    return { kind: "critical", text: `${n} critical result${n === 1 ? "" : "s"} waiting for acknowledgement` };
  }
  if (status.connection === "connected" || last?.event === "connected") return { kind: "ok", text: "Connected" };
  return {
    kind: "warn",
    text: status.connection === "never_started" ? "Not connected" : `Not connected (${status.connection.replace(/_/g, " ")})`,
  };
}

const LABELS: Record<string, string> = {
  patient_name: "Patient",
  test_type: "Test",
  result_id: "Result",
  requires_review: "Needs review",
  reviewed: "Reviewed by the doctor",
  appointment_id: "Appointment",
  reason: "Reason",
  requested_time: "Requested for",
  new_status: "Status",
  scheduled_time: "Scheduled for",
  medication: "Medication",
  doctor_name: "Prescribed by",
  urgent: "Urgent",
};

/** The payload's fields in words, for the detail view. */
export function details(row: Row): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const [field, value] of Object.entries(row.message)) {
    if (field === "type") continue;
    const label = LABELS[field] ?? field.replace(/_/g, " ");
    const text = typeof value === "boolean" ? (value ? "Yes" : "No") : String(value);
    out.push([label, text]);
  }
  out.push(["Sent", localDateTime(row.sent_at)]);
  return out;
}
