// The window: sign-in first, then the inbox with its banner, filters, list and detail, and the
// settings screen.
import * as api from "./api";
import {
  aboutConnection,
  banner,
  details,
  key,
  localDateTime,
  pausedUntil,
  sortInbox,
  trailLine,
  splitQuietHours,
  type AlertSettings,
  type Row,
  type Status,
  type WardlineEvent,
} from "./model";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
let rows: Row[] = [];
let selected: string | null = null;
let lastEvent: WardlineEvent | null = null;
/** How far the relay's clock is ahead of this device's, when it is off by more than a minute. */
let relayAheadS: number | null = null;
let status: Status | null = null;
let settingsOpen = false;

/** A command's error as the person reads it. */
const message = (error: unknown) => (error as { message?: string }).message ?? String(error);

function renderBanner() {
  if (!status) return;
  const b = banner(status, lastEvent, Date.now(), relayAheadS);
  const el = $("banner");
  el.dataset.kind = b.kind;
  el.textContent = b.text;
}

/** A short type label (text, not emoji: a clinic's desktop may have no emoji font). */
function typeBadge(row: Row): string {
  if (row.priority === "critical") return "CRITICAL";
  if (row.type.startsWith("appointment")) return "APPT";
  if (row.type.includes("prescription")) return "RX";
  if (row.type.includes("lab")) return "LAB";
  return "INFO";
}

/** The list's rows as last drawn, by key: a row that has not changed keeps its element. */
let drawn = new Map<string, { li: HTMLLIElement; look: string }>();

/** Everything a row's element shows: when this changes, the element is drawn again. */
const look = (row: Row) =>
  JSON.stringify([row.priority, row.type, row.acked_at, row.read_at, row.title, row.body, row.sent_at, selected === key(row)]);

function rowElement(row: Row): HTMLLIElement {
  const li = document.createElement("li");
  li.setAttribute("role", "option");
  li.tabIndex = 0;
  li.dataset.key = key(row);
  li.setAttribute("aria-selected", String(selected === key(row)));
  li.className = [row.priority === "critical" && row.acked_at === null ? "critical" : "", row.read_at === null ? "unread" : ""].join(" ").trim();
  li.innerHTML = `<div class="title"><span class="badge"></span> <span class="text"></span></div><div class="meta"></div>`;
  const badge = li.querySelector(".badge") as HTMLElement;
  badge.textContent = typeBadge(row);
  badge.dataset.type = row.priority === "critical" ? "critical" : row.type;
  (li.querySelector(".text") as HTMLElement).textContent = row.title;
  (li.lastElementChild as HTMLElement).textContent = `${row.body} · ${localDateTime(row.sent_at)}`;
  li.addEventListener("click", () => select(key(row)));
  li.addEventListener("keydown", (e) => {
    if (e.key === "Enter") select(key(row));
    if (e.key === "ArrowDown") (li.nextElementSibling as HTMLElement | null)?.focus();
    if (e.key === "ArrowUp") (li.previousElementSibling as HTMLElement | null)?.focus();
  });
  return li;
}

/** Draws the list, touching only the rows that changed or moved: while a catch-up stores
 * thousands, the window refreshes a few times a second and most of its rows stay as they were. */
function renderList() {
  const list = $<HTMLUListElement>("list");
  const next = new Map<string, { li: HTMLLIElement; look: string }>();
  const elements = sortInbox(rows).map((row) => {
    const k = key(row);
    const wanted = look(row);
    const before = drawn.get(k);
    const entry = before && before.look === wanted ? before : { li: rowElement(row), look: wanted };
    next.set(k, entry);
    return entry.li;
  });
  drawn = next;
  let at = list.firstElementChild;
  for (const li of elements) {
    if (li === at) {
      at = at.nextElementSibling;
    } else {
      list.insertBefore(li, at);
    }
  }
  while (at) {
    const after = at.nextElementSibling;
    at.remove();
    at = after;
  }
}

function renderDetail() {
  const panel = $("detail");
  const row = rows.find((r) => key(r) === selected);
  if (!row) {
    panel.innerHTML = `<p class="meta">Select a notification.</p>`;
    return;
  }
  panel.replaceChildren();
  const h = document.createElement("h2");
  h.textContent = row.title;
  const dl = document.createElement("dl");
  for (const [label, value] of details(row)) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  }
  const ack = document.createElement("button");
  ack.className = "primary";
  ack.textContent = row.acked_at === null ? "Acknowledge" : "Acknowledged";
  ack.disabled = row.acked_at !== null;
  // A failed acknowledgement is shown, never swallowed: the result is still waiting.
  const failed = document.createElement("p");
  failed.className = "error";
  failed.setAttribute("role", "alert");
  ack.addEventListener("click", async () => {
    failed.textContent = "";
    try {
      await api.acknowledge([key(row)]);
      await refresh();
    } catch (error) {
      failed.textContent = `Not acknowledged: ${message(error)}`;
    }
  });
  const read = document.createElement("button");
  read.textContent = row.read_at === null ? "Mark read" : "Read";
  read.disabled = row.read_at !== null;
  read.addEventListener("click", async () => {
    await api.markRead([key(row)]);
    await refresh();
  });
  panel.append(h, dl, ack, document.createTextNode(" "), read);
  // "Not me / cannot now": the relay escalates it to the backup at once.
  if (row.priority === "critical" && row.acked_at === null) {
    const decline = document.createElement("button");
    decline.id = "decline";
    decline.textContent = "Decline — pass to backup";
    decline.addEventListener("click", async () => {
      failed.textContent = "";
      try {
        await api.decline([key(row)]);
        decline.disabled = true;
        decline.textContent = "Declined: passed to the backup";
      } catch (error) {
        failed.textContent = `Not declined: ${message(error)}`;
      }
    });
    panel.append(document.createTextNode(" "), decline);
  }
  panel.append(failed);
  const trail = document.createElement("section");
  trail.id = "trail";
  trail.setAttribute("aria-label", "What happened to it");
  panel.append(trail);
  void showTrail(row, trail);
}

/** The notification's trail from the relay (delivered, alerted, read, escalated, emailed), under
 * its detail; where the relay cannot say (offline), says why. */
async function showTrail(row: Row, into: HTMLElement) {
  const heading = document.createElement("h3");
  heading.textContent = "Trail";
  try {
    const found = await api.trail(key(row));
    const list = document.createElement("ol");
    for (const event of found.trail) {
      const li = document.createElement("li");
      li.textContent = trailLine(event);
      list.append(li);
    }
    const state = document.createElement("p");
    state.className = "meta";
    state.textContent =
      found.state === "acknowledged" ? `Acknowledged by ${found.acknowledged_by ?? "someone"}.` : found.state === "expired" ? "Expired." : "Waiting for acknowledgement.";
    into.replaceChildren(heading, state, list);
  } catch (error) {
    const why = document.createElement("p");
    why.className = "meta";
    why.textContent = `Trail unavailable: ${message(error)}`;
    into.replaceChildren(heading, why);
  }
}

function select(k: string) {
  selected = k;
  renderList();
  renderDetail();
}

let refreshing: Promise<void> | null = null;
let refreshAgain = false;

/** Refreshes for events: a burst (catching up after being offline stores many notifications at
 * once) makes one refresh while another runs, not one per notification. */
async function refreshForEvents(): Promise<void> {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      await refresh();
    } while (refreshAgain);
  })();
  try {
    await refreshing;
  } finally {
    refreshing = null;
  }
}

async function refresh() {
  status = await api.status();
  const signedIn = status.user !== null;
  if (!signedIn) settingsOpen = false;
  $("signin").hidden = signedIn;
  $("inbox").hidden = !signedIn || settingsOpen;
  $("settings").hidden = !settingsOpen;
  $("signout").hidden = !signedIn;
  $("open-settings").hidden = !signedIn || settingsOpen;
  renderPause();
  $("who").textContent = signedIn ? `${status.user} at ${status.server}` : "";
  if (signedIn) {
    rows = await api.inbox({
      unread: $<HTMLInputElement>("f-unread").checked,
      critical: $<HTMLInputElement>("f-critical").checked,
      kind: $<HTMLSelectElement>("f-type").value,
      search: $<HTMLInputElement>("f-search").value,
    });
    renderList();
    renderDetail();
  }
  renderBanner();
}

/** The pause line and buttons of the settings screen. */
function renderPause() {
  if (!status) return;
  const until = pausedUntil(status.alerts, Date.now());
  $("s-pause-state").textContent = until ? `Non-critical alerts paused until ${until}.` : "Non-critical alerts are on.";
  $<HTMLButtonElement>("s-resume").disabled = until === null;
}

async function openSettings() {
  $("settings-error").textContent = "";
  $("s-saved").textContent = "";
  try {
    const view = await api.settings();
    $("s-user").textContent = view.user ?? "";
    $("s-server").textContent = view.server ?? "";
    const quiet = splitQuietHours(view.alerts.quiet_hours);
    $<HTMLInputElement>("s-quiet").checked = quiet !== null;
    if (quiet) [$<HTMLInputElement>("s-quiet-start").value, $<HTMLInputElement>("s-quiet-end").value] = quiet;
    $<HTMLInputElement>("s-sound").checked = view.alerts.sound;
    $<HTMLInputElement>("s-details").checked = view.alerts.show_details;
    $("s-autostart-set").hidden = view.start_at_login === null;
    $<HTMLInputElement>("s-autostart").checked = view.start_at_login === true;
    settingsOpen = true;
    await refresh();
    $("s-quiet").focus();
  } catch (error) {
    $("settings-error").textContent = message(error);
  }
}

async function closeSettings() {
  settingsOpen = false;
  await refresh();
  $("open-settings").focus();
}

async function saveAlertSettings() {
  $("settings-error").textContent = "";
  $("s-saved").textContent = "";
  const start = $<HTMLInputElement>("s-quiet-start").value;
  const end = $<HTMLInputElement>("s-quiet-end").value;
  const alerts: AlertSettings = {
    quiet_hours: $<HTMLInputElement>("s-quiet").checked ? `${start}-${end}` : null,
    sound: $<HTMLInputElement>("s-sound").checked,
    paused_until: status?.alerts.paused_until ?? null,
    show_details: $<HTMLInputElement>("s-details").checked,
  };
  try {
    await api.setAlertSettings(alerts);
    $("s-saved").textContent = "Saved.";
  } catch (error) {
    $("settings-error").textContent = message(error);
  }
}

async function pause(kind: "hour" | "until_morning" | "off") {
  $("settings-error").textContent = "";
  try {
    await api.pauseAlerts(kind);
    await refresh();
  } catch (error) {
    $("settings-error").textContent = message(error);
  }
}

async function setStartAtLogin() {
  const box = $<HTMLInputElement>("s-autostart");
  $("settings-error").textContent = "";
  try {
    await api.setStartAtLogin(box.checked);
  } catch (error) {
    box.checked = !box.checked;
    $("settings-error").textContent = `Start at login: ${message(error)}`;
  }
}

/** A clicked OS alert: the inbox, unfiltered, with that notification open. */
async function showAlerted(channel: string | null, id: string | null) {
  settingsOpen = false;
  $<HTMLInputElement>("f-unread").checked = false;
  $<HTMLInputElement>("f-critical").checked = false;
  $<HTMLSelectElement>("f-type").value = "";
  $<HTMLInputElement>("f-search").value = "";
  if (channel !== null && id !== null) selected = `${channel}/${id}`;
  await refresh();
  (document.querySelector(`#list li[aria-selected="true"]`) as HTMLElement | null)?.focus();
}

export async function start() {
  $("open-settings").addEventListener("click", openSettings);
  $("close-settings").addEventListener("click", closeSettings);
  $("s-save").addEventListener("click", saveAlertSettings);
  $("s-pause-hour").addEventListener("click", () => pause("hour"));
  $("s-pause-morning").addEventListener("click", () => pause("until_morning"));
  $("s-resume").addEventListener("click", () => pause("off"));
  $("s-autostart").addEventListener("change", setStartAtLogin);
  $("signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("signin-error").textContent = "";
    try {
      await api.signIn($<HTMLInputElement>("server").value, $<HTMLInputElement>("user").value, $<HTMLInputElement>("token").value);
      $<HTMLInputElement>("token").value = "";
      await refresh();
    } catch (error) {
      $("signin-error").textContent = message(error);
    }
  });
  $("signout").addEventListener("click", async () => {
    await api.signOut();
    lastEvent = null;
    await refresh();
  });
  for (const id of ["f-unread", "f-critical", "f-type"]) $(id).addEventListener("change", refresh);
  $("f-search").addEventListener("input", refresh);
  await api.onEvent(async (event) => {
    if (aboutConnection(event)) lastEvent = event.event === "signed_out" ? null : event;
    if (event.event === "clock_skew") relayAheadS = event.relay_ahead_s;
    if (event.event === "alert_opened") await showAlerted(event.channel, event.id);
    else await refreshForEvents();
  });
  await refresh();
}

void start();
