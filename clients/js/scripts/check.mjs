// Checks what CI must keep true of the built client (run after `npm run build`):
// - dist/herald.mjs is at most 8 KiB minified and gzipped;
// - the close and error-frame codes in src/codes.ts are the server's: the same names and values
//   as core/src/codes.rs (plus 1006, which only a client sees), and the same codes as the tables
//   of docs/protocol.md §9 and §10.
// Prints what it checked; exits 1 naming every difference.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { CloseCode, ErrorCode } from "../dist/herald.mjs";

const LIMIT = 8192;
const root = new URL("../../../", import.meta.url);
const failures = [];

const sizes = {};
for (const f of ["herald.mjs", "herald.cjs", "herald.iife.js"]) {
  const min = readFileSync(new URL("../dist/" + f, import.meta.url));
  sizes[f] = { minified: min.length, gzipped: gzipSync(min, { level: 9 }).length };
}
if (sizes["herald.mjs"].gzipped > LIMIT)
  failures.push(`dist/herald.mjs is ${sizes["herald.mjs"].gzipped} bytes gzipped, above ${LIMIT}`);

function rustEnum(src, name) {
  const body = src.slice(src.indexOf(`pub enum ${name} {`)).split("}")[0];
  return Object.fromEntries([...body.matchAll(/^\s*(\w+) = (\d+),/gm)].map((m) => [m[1], Number(m[2])]));
}
function docCodes(doc, from, to) {
  const part = doc.slice(doc.indexOf(from), doc.indexOf(to));
  return [...part.matchAll(/^\| (\d{4}) \|/gm)].map((m) => Number(m[1])).sort();
}
function same(what, got, want) {
  const g = JSON.stringify(Object.entries(got).sort());
  const w = JSON.stringify(Object.entries(want).sort());
  if (g !== w) failures.push(`${what}: client ${g} differs from server ${w}`);
}

const rs = readFileSync(new URL("core/src/codes.rs", root), "utf8");
const doc = readFileSync(new URL("docs/protocol.md", root), "utf8");
const { Abnormal, ...closeCodes } = CloseCode;
if (Abnormal !== 1006) failures.push("CloseCode.Abnormal is not 1006");
same("close codes vs core/src/codes.rs CloseCode", closeCodes, rustEnum(rs, "CloseCode"));
same("error codes vs core/src/codes.rs FrameError", ErrorCode, rustEnum(rs, "FrameError"));
const sorted = (o) => Object.values(o).sort();
same("close codes vs docs/protocol.md §9", sorted(closeCodes), docCodes(doc, "## 9. Close codes", "## 10."));
same("error codes vs docs/protocol.md §10", sorted(ErrorCode), docCodes(doc, "## 10. Error-frame codes", "## 11."));
if (Object.keys(closeCodes).length < 10) failures.push("too few close codes read: the parsers broke");

console.log(JSON.stringify({ sizes, limit: LIMIT, closeCodes: Object.keys(CloseCode).length, errorCodes: Object.keys(ErrorCode).length }));
if (failures.length) {
  for (const f of failures) console.error("FAIL " + f);
  process.exit(1);
}
console.log("client check ok");
