// Bundle the dashboard into ../static/dist, which is committed and shipped in the wheel, so a
// Python-only install has a working dashboard (docs/operations.md, "The dashboard's frontend").
// ES modules with code splitting: the charts (ECharts) load only on the pages that draw them, so
// the runs page stays small.
//
//   node build.mjs                  the committed bundle (minified, no source maps)
//   node build.mjs --outdir DIR     the same bundle into DIR (tests/test_frontend_bundle.py
//                                   compares it with the committed one, byte for byte)
//   node build.mjs --sourcemap      with linked source maps, for debugging (do not commit)
//   node build.mjs --watch          rebuild on change, unminified, inline source maps
//
// The output must be a function of the sources and the lockfile alone: no absolute paths, no
// dates, so that two builds (on any machine) are byte-identical.
import * as esbuild from "esbuild";
import { rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const watch = args.includes("--watch");
const at = args.indexOf("--outdir");
if (at >= 0 && !args[at + 1]) {
  console.error("build.mjs: --outdir needs a directory");
  process.exit(2);
}
const outdir = at >= 0 ? resolve(args[at + 1]) : join(here, "..", "static", "dist");

rmSync(outdir, { recursive: true, force: true });
const options = {
  entryPoints: { main: join(here, "src", "main.js") },
  absWorkingDir: here,
  outdir,
  bundle: true,
  splitting: true,
  format: "esm",
  target: ["es2020"],
  minify: !watch,
  // Source maps with their sources inside weigh 4 MB (ECharts): not in the committed bundle.
  sourcemap: watch ? "inline" : args.includes("--sourcemap") ? "linked" : false,
  chunkNames: "chunks/[name]-[hash]",
  legalComments: "linked",
  logLevel: "info",
};
if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
}
