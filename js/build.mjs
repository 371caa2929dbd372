// Bundles each widget's TypeScript entry into defuse_widgets/static/<name>.js and prints sizes.
import * as esbuild from "esbuild";
import { statSync } from "node:fs";

const entries = { explorer: "js/explorer.ts", interpolator: "js/interpolator.ts" };
const BUDGET_BYTES = 2_000_000;
const watch = process.argv.includes("--watch");

const options = {
  entryPoints: entries,
  outdir: "defuse_widgets/static",
  bundle: true,
  format: "esm",
  minify: !watch,
  target: ["es2020"],
  logLevel: "warning",
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
  console.log("watching js/ (run the notebook with ANYWIDGET_HMR=1 for hot reload)");
} else {
  await esbuild.build(options);
  let over = false;
  for (const name of Object.keys(entries)) {
    const size = statSync(`defuse_widgets/static/${name}.js`).size;
    over ||= size > BUDGET_BYTES;
    console.log(`${name}.js: ${(size / 1e6).toFixed(2)} MB (budget ${BUDGET_BYTES / 1e6} MB)`);
  }
  if (over) {
    console.error("a bundle is over its size budget");
    process.exit(1);
  }
}
