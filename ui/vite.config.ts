import { defineConfig } from "vite";

// The window loads ui/dist (tauri.conf.json's frontendDist); tests run in jsdom.
export default defineConfig({
  clearScreen: false,
  build: { outDir: "dist", emptyOutDir: true, target: "es2022" },
  // Unit tests only: tests/ holds the browser tests, run by node --test against the built UI.
  test: { environment: "jsdom", globals: true, include: ["src/**/*.test.ts"] },
});
