import { defineConfig } from "vite";

// The window loads ui/dist (tauri.conf.json's frontendDist); tests run in jsdom.
export default defineConfig({
  clearScreen: false,
  build: { outDir: "dist", emptyOutDir: true, target: "es2022" },
  test: { environment: "jsdom", globals: true },
});
