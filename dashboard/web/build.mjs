// Builds the web UI into dist/: hashed bundles under dist/assets/ and an
// index.html that names them. The Go side embeds dist/ (go:embed).
//   node build.mjs           production build
//   node build.mjs --watch   rebuild on change (serve with `fieldhub serve`)
import * as esbuild from "esbuild";
import { readFileSync, writeFileSync, rmSync, mkdirSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";

const dist = "dist";
const watch = process.argv.includes("--watch");

function clean() {
  mkdirSync(dist, { recursive: true });
  for (const f of readdirSync(dist)) {
    if (f !== ".gitkeep") rmSync(join(dist, f), { recursive: true, force: true });
  }
}

function writeIndex(metafile) {
  const outs = Object.keys(metafile.outputs);
  const js = outs.find((o) => o.endsWith(".js"));
  const css = outs.find((o) => o.endsWith(".css"));
  if (!js || !css) throw new Error("build produced no js or css: " + outs.join(", "));
  const html = readFileSync("src/index.html", "utf8")
    .replace("%CSS%", "/assets/" + basename(css))
    .replace("%JS%", "/assets/" + basename(js));
  writeFileSync(join(dist, "index.html"), html);
}

const options = {
  entryPoints: { app: "src/main.ts" },
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: !watch,
  sourcemap: watch ? "inline" : false,
  outdir: join(dist, "assets"),
  entryNames: "[name]-[hash]",
  metafile: true,
  legalComments: "linked",
  logLevel: "info",
  plugins: [{
    name: "index",
    setup(build) {
      build.onStart(clean);
      build.onEnd((r) => { if (r.metafile && r.errors.length === 0) writeIndex(r.metafile); });
    },
  }],
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
}
