package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// dist holds the built web UI (make assets). The build output is not
// committed: on a fresh clone only web/dist/.gitkeep is there, the hub
// still builds, and / explains how to build the UI.
//
//go:embed all:web/dist
var dist embed.FS

// uiCSP allows only the hub's own scripts, styles and API. uPlot sets
// element styles, hence 'unsafe-inline' for styles (not scripts).
const uiCSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
	"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

const notBuiltPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fieldhub: UI not built</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#1d2733}code{background:#eef1f4;padding:.1em .3em;border-radius:3px}</style>
</head><body>
<h1>The web UI is not built</h1>
<p>This fieldhub binary was built without its web assets. Build them and the binary with
<code>make build</code> (it runs <code>npm ci &amp;&amp; npm run build</code> in <code>dashboard/web</code>),
or start the hub with <code>make run</code>.</p>
<p>The HTTP API works regardless: see <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p>
</body></html>
`

// uiHandler serves the embedded UI.
func uiHandler() http.Handler {
	sub, err := fs.Sub(dist, "web/dist")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	return uiHandlerFS(sub)
}

// uiHandlerFS serves index.html at / and the hashed bundles under /assets/
// from sub, or the "not built" page when sub has no index.html.
func uiHandlerFS(sub fs.FS) http.Handler {
	index, err := fs.ReadFile(sub, "index.html")
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", uiCSP)
		switch {
		case err != nil:
			h.Set("Content-Type", "text/html; charset=utf-8")
			h.Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(notBuiltPage))
		case r.URL.Path == "/":
			h.Set("Content-Type", "text/html; charset=utf-8")
			h.Set("Cache-Control", "no-cache")
			w.Write(index)
		case strings.HasPrefix(r.URL.Path, "/assets/") && !strings.HasSuffix(r.URL.Path, "/"):
			// File names carry a content hash, so they never change.
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
			files.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}
