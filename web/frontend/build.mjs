// Bundle the dashboard into ../static/dist (gitignored; packaged into the wheel by setup.py's
// build step). ES modules with code splitting: the charts (ECharts) load only on the pages that
// draw them, so the runs page stays small.
import * as esbuild from "esbuild";
import { rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = join(here, "..", "static", "dist");
const watch = process.argv.includes("--watch");

rmSync(outdir, { recursive: true, force: true });
const options = {
  entryPoints: { main: join(here, "src", "main.js") },
  outdir,
  bundle: true,
  splitting: true,
  format: "esm",
  target: ["es2020"],
  minify: !watch,
  sourcemap: true,
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
