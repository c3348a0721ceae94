// Builds dist/: herald.mjs (ES module), herald.cjs (CommonJS: Node's require, WeChat mini
// programs), herald.iife.js (a <script> tag: the global `Herald`), all minified, targeting ES2020.
import { rmSync } from "node:fs";
import { build } from "esbuild";

rmSync("dist", { recursive: true, force: true });
const common = { entryPoints: ["src/index.ts"], bundle: true, minify: true, target: "es2020", logLevel: "warning" };
await Promise.all([
  build({ ...common, format: "esm", outfile: "dist/herald.mjs" }),
  build({ ...common, format: "cjs", outfile: "dist/herald.cjs" }),
  build({ ...common, format: "iife", globalName: "Herald", outfile: "dist/herald.iife.js" }),
]);
