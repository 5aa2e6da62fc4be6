package dashboard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

// TestUIHandler: with a built UI, / serves index.html (not cached), assets
// are cached for good, directories are not listed and unknown paths are
// 404; without index.html (a fresh clone), / says how to build the UI.
// Both carry the Content-Security-Policy.
func TestUIHandler(t *testing.T) {
	get := func(h http.Handler, path string) *http.Response {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Result()
	}
	body := func(r *http.Response) string { b, _ := io.ReadAll(r.Body); return string(b) }

	built := uiHandlerFS(fstest.MapFS{
		"index.html":        {Data: []byte("<!doctype html><title>fieldhub</title>")},
		"assets/app-X1.js":  {Data: []byte("console.log(1)")},
		"assets/app-X1.css": {Data: []byte("body{}")},
	})
	r := get(built, "/")
	if r.StatusCode != 200 || !strings.Contains(body(r), "<title>fieldhub") || r.Header.Get("Cache-Control") != "no-cache" ||
		!strings.Contains(r.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Errorf("/: %d %v", r.StatusCode, r.Header)
	}
	r = get(built, "/assets/app-X1.js")
	if r.StatusCode != 200 || !strings.Contains(r.Header.Get("Cache-Control"), "immutable") || !strings.Contains(r.Header.Get("Content-Type"), "javascript") {
		t.Errorf("asset: %d %v", r.StatusCode, r.Header)
	}
	for _, p := range []string{"/assets/", "/assets/nope.js", "/elsewhere"} {
		if r := get(built, p); r.StatusCode != 404 {
			t.Errorf("%s: %d, want 404", p, r.StatusCode)
		}
	}

	bare := uiHandlerFS(fstest.MapFS{".gitkeep": {}})
	r = get(bare, "/")
	if r.StatusCode != 503 || !strings.Contains(body(r), "make build") {
		t.Errorf("unbuilt /: %d", r.StatusCode)
	}

	// The embedded UI is served by New at / in either state.
	f := newFixture(t, fixtureOpts{})
	res := f.do("GET", "/", "", auth{})
	if (res.code != 200 && res.code != 503) || res.header.Get("Content-Security-Policy") == "" {
		t.Errorf("GET / through the API handler: %d", res.code)
	}
}
