import { defineConfig } from "vite";

// The window loads ui/dist (tauri.conf.json's frontendDist); tests run in jsdom.
export default defineConfig({
  clearScreen: false,
  build: { outDir: "dist", emptyOutDir: true, target: "es2022" },
  // Unit tests only: tests/ holds the browser tests, run by node --test against the built UI. They
  // run in a time zone other than UTC (Berlin: UTC+1 in November), so a time shown in the relay's
  // UTC instead of the person's own is caught.
  test: { environment: "jsdom", globals: true, include: ["src/**/*.test.ts"], env: { TZ: "Europe/Berlin" } },
});
