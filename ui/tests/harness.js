// Loaded before the app in browser tests: Tauri's IPC mocked at the boundary with
// @tauri-apps/api/mocks, holding a small fake receiver the test drives through window.__wardline.
import { mockIPC } from "/tauri-api/mocks.js";
import { emit } from "/tauri-api/event.js";

const now = Date.now();
const row = (id, priority, type, title, body, message, minutesAgo) => ({
  id, channel: "doctor:d1:notifications", type, priority, title, body, message,
  sent_at: new Date(now - minutesAgo * 60000).toISOString(), received_at: now - minutesAgo * 60000,
  read_at: null, acked_at: null,
});
const state = {
  // A test that starts signed in sets this before reloading the page.
  signedIn: sessionStorage.getItem("signed-in") === "yes",
  calls: [],
  gaps: [],
  alerts: { quiet_hours: null, sound: true, paused_until: null, show_details: false },
  // A test sets this to make the relay unreachable for the trail.
  trailError: null,
  startAtLogin: false,
  // A test sets this to make "start at login" fail as it would without a writable autostart folder.
  autostartError: null,
  // A test sets this to make acknowledging fail as it would with a broken inbox.
  acknowledgeError: null,
  rows: [
    row("1795400000000-0", "normal", "appointment_requested", "Appointment requested by Alice Johnson", "Alice Johnson: Annual checkup",
        { type: "appointment_requested", patient_name: "Alice Johnson", reason: "Annual checkup" }, 5),
    row("1795400000001-0", "critical", "critical_lab_result", "Critical lab result — BMP for Bob Wilson", "Requires review now.",
        { type: "critical_lab_result", patient_name: "Bob Wilson", test_type: "BMP", requires_review: true }, 30),
    row("1795400000002-0", "normal", "lab_result_available", "Lab result available — CBC", "Your result is ready",
        { type: "lab_result_available", test_type: "CBC", reviewed: true }, 1),
  ],
};
const status = () => ({
  user: state.signedIn ? "d1" : null, server: state.signedIn ? "http://relay.test:8851" : null,
  connection: state.signedIn ? "connected" : "never_started", detail: "",
  counts: { total: state.rows.length, unread: state.rows.filter((r) => !r.read_at).length,
            unacked_critical: state.rows.filter((r) => r.priority === "critical" && !r.acked_at).length, last_received_at: now },
  gaps: state.gaps,
  alerts: state.alerts,
});
const byKey = (k) => state.rows.find((r) => `${r.channel}/${r.id}` === k);

mockIPC((cmd, args) => {
  state.calls.push([cmd, args]);
  switch (cmd) {
    case "status": return status();
    case "sign_in":
      if (args.token !== "good-token") throw { code: "sign_in", message: "the relay refused the token (401): invalid token: bad signature" };
      state.signedIn = true;
      return null;
    case "sign_out": state.signedIn = false; return null;
    case "inbox": {
      const q = args.query;
      return state.rows.filter((r) => (!q.unread || !r.read_at) && (!q.critical || r.priority === "critical")
        && (!q.kind || r.type === q.kind) && (!q.search || (r.title + r.body).toLowerCase().includes(q.search.toLowerCase())));
    }
    case "acknowledge":
      if (state.acknowledgeError) throw { code: "inbox", message: state.acknowledgeError };
      for (const k of args.ids) { const r = byKey(k); r.acked_at = Date.now(); r.read_at ??= Date.now(); } return null;
    case "mark_read": for (const k of args.ids) byKey(k).read_at = Date.now(); return null;
    case "decline": for (const k of args.ids) byKey(k).read_at ??= Date.now(); return null;
    case "trail": {
      if (state.trailError) throw { code: "relay", message: state.trailError };
      const r = byKey(args.id);
      return {
        state: r.acked_at ? "acknowledged" : "open", acknowledged_by: r.acked_at ? "d1" : null,
        trail: [
          { at: r.sent_at, event: "published" },
          { at: r.sent_at, event: "delivered", user: "d1", device: "laptop-1" },
          { at: r.sent_at, event: "repeated", detail: "reminder 1" },
          { at: r.sent_at, event: "escalated", detail: "to doctor:dr-backup:notifications (1795400000009-0)" },
        ],
      };
    }
    case "settings": return { server: status().server, user: status().user, alerts: state.alerts, start_at_login: state.startAtLogin };
    case "set_alert_settings": state.alerts = args.alerts; return null;
    case "pause_alerts":
      state.alerts = { ...state.alerts, paused_until: args.pause === "off" ? null : Date.now() + 3600000 };
      return null;
    case "set_start_at_login":
      if (state.autostartError) throw { code: "autostart", message: state.autostartError };
      state.startAtLogin = args.enabled;
      return null;
    default: return undefined;
  }
}, { shouldMockEvents: true });

window.__wardline = {
  state,
  emit: (payload) => emit("wardline://event", payload),
};
