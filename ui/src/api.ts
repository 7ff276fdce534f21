// Every call the window makes, in one place: the Tauri commands and the event stream.
import { invoke } from "@tauri-apps/api/core";
import { listen } from "@tauri-apps/api/event";
import type { AlertSettings, Row, SettingsView, Status, Trail, WardlineEvent } from "./model";

export interface InboxQuery {
  unread?: boolean;
  critical?: boolean;
  kind?: string;
  search?: string;
}

export const signIn = (server: string, user: string, token: string) => invoke<void>("sign_in", { server, user, token });
export const signOut = () => invoke<void>("sign_out");
export const inbox = (query: InboxQuery) => invoke<Row[]>("inbox", { query });
export const acknowledge = (ids: string[]) => invoke<void>("acknowledge", { ids });
export const markRead = (ids: string[]) => invoke<void>("mark_read", { ids });
export const decline = (ids: string[]) => invoke<void>("decline", { ids });
export const trail = (id: string) => invoke<Trail>("trail", { id });
export const status = () => invoke<Status>("status");
export const settings = () => invoke<SettingsView>("settings");
export const setAlertSettings = (alerts: AlertSettings) => invoke<void>("set_alert_settings", { alerts });
export const pauseAlerts = (pause: "hour" | "until_morning" | "off") => invoke<void>("pause_alerts", { pause });
export const setStartAtLogin = (enabled: boolean) => invoke<void>("set_start_at_login", { enabled });
export const onEvent = (handler: (event: WardlineEvent) => void) =>
  listen<WardlineEvent>("wardline://event", (e) => handler(e.payload));
