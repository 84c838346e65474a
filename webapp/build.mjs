// Builds the web app into services/api/static/app (served by the API under /app):
// one JavaScript and one CSS bundle with content hashes in their names (cached for good),
// and index.html naming them (never cached). Run by the project's setup (./dev): npm ci, then this.
import { build } from "esbuild";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "services", "api", "static", "app");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const result = await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "iife",
  target: ["es2020"],
  outdir: out,
  entryNames: "[name]-[hash]",
  loader: { ".png": "dataurl", ".svg": "dataurl" },
  metafile: true,
  legalComments: "linked",
  logLevel: "warning",
});

const outputs = Object.keys(result.metafile.outputs).map((p) => basename(p));
const js = outputs.find((n) => n.endsWith(".js"));
const css = outputs.find((n) => n.endsWith(".css"));
if (!js || !css) throw new Error(`the build made no JavaScript or CSS bundle: ${outputs}`);
const html = readFileSync(join(here, "src", "index.html"), "utf8").replace("{{js}}", js).replace("{{css}}", css);
writeFileSync(join(out, "index.html"), html);
const bytes = Object.entries(result.metafile.outputs)
  .filter(([p]) => p.endsWith(".js") || p.endsWith(".css"))
  .reduce((n, [, o]) => n + o.bytes, 0);
console.log(`webapp: built ${js} and ${css} (${(bytes / 1024).toFixed(0)} KiB of JavaScript and CSS) in ${out}`);
