package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// TestAPIAuthRequired: every route except health, readiness, login and the
// OpenAPI document refuses a request without credentials, with a bad
// bearer token, with a malformed Authorization header and with an unknown
// session cookie, all as 401 with a JSON error.
func TestAPIAuthRequired(t *testing.T) {
	f := newFixture(t, fixtureOpts{commands: true})
	publics := map[string]bool{"GET /healthz": true, "GET /readyz": true, "POST /api/v1/session": true, "GET /api/v1/openapi.json": true}
	for _, rt := range f.s.Routes() {
		key := rt.Method + " " + rt.Path
		if rt.Public != publics[key] {
			t.Errorf("%s: public=%v, want %v", key, rt.Public, publics[key])
		}
		if rt.Public {
			continue
		}
		path := fillPath(rt.Path, nil)
		for _, tc := range []struct {
			name string
			a    auth
		}{
			{"none", auth{}},
			{"bad token", bearer("fha_not-a-token")},
			{"basic", auth{header: map[string]string{"Authorization": "Basic YWRtaW46YWRtaW4="}}},
			{"unknown session", auth{cookie: &http.Cookie{Name: SessionCookie, Value: "forged"}, csrf: "x"}},
		} {
			r := f.do(rt.Method, path, `{}`, tc.a)
			if r.code != 401 || r.errCode() != "unauthorized" {
				t.Errorf("%s %s (%s): %d %s, want 401 unauthorized", rt.Method, path, tc.name, r.code, r.body)
			}
		}
	}
	// The public ones answer without credentials.
	expect(t, "healthz", f.do("GET", "/healthz", "", auth{}), 200)
	expect(t, "readyz", f.do("GET", "/readyz", "", auth{}), 200)
	expect(t, "openapi", f.do("GET", "/api/v1/openapi.json", "", auth{}), 200)
}

// TestCSRF: a cookie-authenticated request that changes state is refused
// (403 csrf) without the session's X-CSRF-Token, or with a wrong one, on
// every state-changing route; the same request with the token gets past
// the check; GETs need no token; bearer requests need none either; a
// cross-origin request is refused even with the token.
func TestCSRF(t *testing.T) {
	f := newFixture(t, fixtureOpts{commands: true})
	f.addDevice("csrf-dev", "", nil)
	cookie, csrf := f.login(f.token)
	if csrf == "" {
		t.Fatal("login returned no CSRF token")
	}
	vals := map[string]string{"id": "csrf-dev"}
	for _, rt := range f.s.Routes() {
		if rt.Public || safeMethod(rt.Method) {
			continue
		}
		path := fillPath(rt.Path, vals)
		for _, bad := range []string{"", "wrong"} {
			r := f.do(rt.Method, path, `{}`, auth{cookie: cookie, csrf: bad})
			if r.code != 403 || r.errCode() != "csrf" {
				t.Errorf("%s %s with CSRF token %q: %d %s, want 403 csrf", rt.Method, path, bad, r.code, r.body)
			}
		}
	}
	// With the token the request passes the check (and fails or succeeds
	// on its merits).
	r := f.do("POST", "/api/v1/devices", `{"id": "via-cookie"}`, auth{cookie: cookie, csrf: csrf})
	expect(t, "create with cookie and CSRF token", r, 201)
	r = f.do("POST", "/api/v1/devices/csrf-dev/commands", `{"name": "ping", "idempotency_key": "k"}`, auth{cookie: cookie, csrf: csrf})
	expect(t, "command with cookie and CSRF token", r, 201)
	var c1, c2 CommandView
	r.decode(t, &c1)
	r = f.do("POST", "/api/v1/devices/csrf-dev/commands", `{"name": "ping", "idempotency_key": "k"}`, auth{cookie: cookie, csrf: csrf})
	expect(t, "same idempotency key", r, 200)
	r.decode(t, &c2)
	if c1.ID == "" || c1.ID != c2.ID {
		t.Errorf("idempotency key gave commands %q and %q, want one", c1.ID, c2.ID)
	}
	expect(t, "GET with cookie, no CSRF token", f.do("GET", "/api/v1/summary", "", auth{cookie: cookie}), 200)
	expect(t, "bearer needs no CSRF token", f.admin("POST", "/api/v1/devices", `{"id": "via-bearer"}`), 201)
	r = f.do("DELETE", "/api/v1/devices/via-cookie", "", auth{cookie: cookie, csrf: csrf, header: map[string]string{"Origin": "https://evil.example"}})
	expect(t, "cross-origin with cookie", r, 403, "forbidden")
	r = f.do("DELETE", "/api/v1/devices/via-cookie", "", auth{cookie: cookie, csrf: csrf, header: map[string]string{"Origin": f.srv.URL}})
	expect(t, "same origin with cookie", r, 204)
}

// TestSessionCookie: the login cookie is HttpOnly, SameSite=Strict, path
// /, Secure only behind TLS; GET /api/v1/session reports it; logout
// revokes it server-side (the old cookie value stops working), and so does
// deleting its API token.
func TestSessionCookie(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	r := f.do("POST", "/api/v1/session", fmt.Sprintf(`{"token": %q}`, f.token), auth{})
	expect(t, "login", r, 200)
	var c *http.Cookie
	for _, k := range r.cookie {
		if k.Name == SessionCookie {
			c = k
		}
	}
	if c == nil {
		t.Fatalf("no session cookie in %v", r.header["Set-Cookie"])
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Secure {
		t.Errorf("cookie %q: want HttpOnly, SameSite=Strict, Path=/, not Secure over plain HTTP", r.header.Get("Set-Cookie"))
	}
	r = f.do("POST", "/api/v1/session", fmt.Sprintf(`{"token": %q}`, f.token), auth{header: map[string]string{"X-Forwarded-Proto": "https"}})
	if sc := r.header.Get("Set-Cookie"); !strings.Contains(sc, "Secure") {
		t.Errorf("behind TLS: cookie %q lacks Secure", sc)
	}

	var info SessionInfo
	r = f.do("GET", "/api/v1/session", "", auth{cookie: c})
	expect(t, "whoami", r, 200)
	r.decode(t, &info)
	if info.Auth != "session" || info.TokenName != "admin" || info.CSRFToken == "" {
		t.Errorf("whoami = %+v", info)
	}
	var binfo SessionInfo
	f.admin("GET", "/api/v1/session", "").decode(t, &binfo)
	if binfo.Auth != "bearer" || binfo.CSRFToken != "" {
		t.Errorf("whoami with bearer = %+v", binfo)
	}

	// Logout revokes.
	f.do("GET", "/api/v1/session", "", auth{cookie: c}).decode(t, &info)
	r = f.do("DELETE", "/api/v1/session", "", auth{cookie: c, csrf: info.CSRFToken})
	expect(t, "logout", r, 204)
	if sc := r.header.Get("Set-Cookie"); !strings.Contains(sc, "Max-Age=0") {
		t.Errorf("logout did not clear the cookie: %q", sc)
	}
	expect(t, "old cookie after logout", f.do("GET", "/api/v1/summary", "", auth{cookie: c}), 401, "unauthorized")

	// Deleting the token revokes its sessions.
	_, other, err := f.reg.CreateAPIToken(context.Background(), "ops")
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := f.login(other)
	expect(t, "session of ops", f.do("GET", "/api/v1/summary", "", auth{cookie: c2}), 200)
	var list TokenList
	f.admin("GET", "/api/v1/tokens", "").decode(t, &list)
	i := slices.IndexFunc(list.Tokens, func(tk registry.APIToken) bool { return tk.Name == "ops" })
	expect(t, "delete ops token", f.admin("DELETE", "/api/v1/tokens/"+list.Tokens[i].ID, ""), 204)
	expect(t, "session of a deleted token", f.do("GET", "/api/v1/summary", "", auth{cookie: c2}), 401)
}

// TestSessionExpiry: sessions end after the idle timeout (a fake clock).
func TestSessionExpiry(t *testing.T) {
	f := newFixture(t, fixtureOpts{auth: AuthOptions{SessionIdle: time.Hour}})
	now := time.Now()
	f.s.Now = func() time.Time { return now }
	c, _ := f.login(f.token)
	now = now.Add(59 * time.Minute)
	expect(t, "within idle timeout", f.do("GET", "/api/v1/info", "", auth{cookie: c}), 200)
	now = now.Add(61 * time.Minute)
	expect(t, "after idle timeout", f.do("GET", "/api/v1/info", "", auth{cookie: c}), 401)
}

// TestLoginRateLimit: a flood of logins from one address gets 429 with
// Retry-After once the burst is spent, good token or bad; other
// addresses are not affected (limiter unit check).
func TestLoginRateLimit(t *testing.T) {
	f := newFixture(t, fixtureOpts{auth: AuthOptions{LoginBurst: 5, LoginEvery: time.Hour}})
	for i := range 5 {
		r := f.do("POST", "/api/v1/session", `{"token": "fha_wrong"}`, auth{})
		expect(t, fmt.Sprintf("attempt %d", i+1), r, 401)
	}
	r := f.do("POST", "/api/v1/session", fmt.Sprintf(`{"token": %q}`, f.token), auth{})
	expect(t, "attempt 6, right token", r, 429, "rate_limited")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	if ok, _ := f.s.logins.allow("192.0.2.7", time.Now()); !ok {
		t.Error("another address was limited too")
	}
	// Bad input is 400/415, not 401.
	l := newFixture(t, fixtureOpts{})
	expect(t, "no token", l.do("POST", "/api/v1/session", `{}`, auth{}), 400, "bad_request")
	expect(t, "not JSON", l.do("POST", "/api/v1/session", `{`, auth{}), 400, "bad_request")
	r = l.do("POST", "/api/v1/session", `token=x`, auth{header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}})
	expect(t, "form post", r, 415)
}

// TestDevicesAPI: create (201, the token once, MQTT hints), duplicate
// (409), bad input (400), show with latest values, rotate (the new token
// works, the old does not), delete (204, then 404).
func TestDevicesAPI(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	r := f.admin("POST", "/api/v1/devices", `{"id": "th-1", "type": "strict", "labels": {"site": "lab"}}`)
	expect(t, "create", r, 201)
	var created CreatedDevice
	r.decode(t, &created)
	if created.Device.ID != "th-1" || created.Device.Labels["site"] != "lab" || !strings.HasPrefix(created.Token, "fhd_") ||
		created.MQTT.Topic != "devices/th-1/telemetry" || created.MQTT.Username != "th-1" || r.header.Get("Location") != "/api/v1/devices/th-1" {
		t.Errorf("create = %+v, Location %q", created, r.header.Get("Location"))
	}
	if ok, _ := f.reg.AuthenticateDevice(ctx, "th-1", created.Token); !ok {
		t.Error("the returned token does not authenticate the device")
	}
	expect(t, "duplicate", f.admin("POST", "/api/v1/devices", `{"id": "th-1"}`), 409, "exists")
	for _, body := range []string{`{"id": ""}`, `{"id": "a/b"}`, `{"id": "ok", "labels": {"": "x"}}`, `not json`, `{"id": 5}`} {
		expect(t, "create "+body, f.admin("POST", "/api/v1/devices", body), 400, "bad_request")
	}

	if err := f.ingest("th-1", `{"metrics": {"temp": 21.5}}`); err != nil {
		t.Fatal(err)
	}
	var dv DeviceView
	r = f.admin("GET", "/api/v1/devices/th-1", "")
	expect(t, "show", r, 200)
	r.decode(t, &dv)
	if dv.ID != "th-1" || dv.Type != "strict" || len(dv.Latest) != 1 || dv.Latest[0].Metric != "temp" || dv.Latest[0].Value != 21.5 {
		t.Errorf("show = %+v", dv)
	}
	expect(t, "show unknown", f.admin("GET", "/api/v1/devices/nope", ""), 404, "not_found")

	var rot RotatedToken
	r = f.admin("POST", "/api/v1/devices/th-1/token", "")
	expect(t, "rotate", r, 200)
	r.decode(t, &rot)
	if ok, _ := f.reg.AuthenticateDevice(ctx, "th-1", rot.Token); !ok || rot.Token == created.Token {
		t.Error("the rotated token does not authenticate")
	}
	if ok, _ := f.reg.AuthenticateDevice(ctx, "th-1", created.Token); ok {
		t.Error("the old token still authenticates after rotation")
	}
	expect(t, "rotate unknown", f.admin("POST", "/api/v1/devices/nope/token", ""), 404)

	expect(t, "delete", f.admin("DELETE", "/api/v1/devices/th-1", ""), 204)
	expect(t, "delete again", f.admin("DELETE", "/api/v1/devices/th-1", ""), 404, "not_found")
	expect(t, "show deleted", f.admin("GET", "/api/v1/devices/th-1", ""), 404)
}

// TestDevicePaging walks 250 devices in pages of 100 (100, 100, 50, with
// next empty at the end), and checks the filters and their bad input.
func TestDevicePaging(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	for i := range 250 {
		typ, labels := "a", map[string]string{"site": "north"}
		if i%5 == 0 {
			typ, labels = "b", map[string]string{"site": "south", "floor": "2"}
		}
		f.addDevice(fmt.Sprintf("dev-%03d", i), typ, labels)
	}
	for i := range 10 {
		if err := f.reg.SetPresence(ctx, fmt.Sprintf("dev-%03d", i), true, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	var all []string
	after, pages := "", 0
	for {
		var p DevicePage
		r := f.admin("GET", "/api/v1/devices?limit=100&after="+after, "")
		expect(t, "page", r, 200)
		r.decode(t, &p)
		pages++
		for _, d := range p.Devices {
			all = append(all, d.ID)
		}
		if want := []int{100, 100, 50}[pages-1]; len(p.Devices) != want {
			t.Fatalf("page %d has %d devices, want %d", pages, len(p.Devices), want)
		}
		if p.Next == "" {
			break
		}
		after = p.Next
	}
	if pages != 3 || len(all) != 250 || !slices.IsSorted(all) || len(slices.Compact(slices.Clone(all))) != 250 {
		t.Fatalf("walked %d pages, %d ids (sorted %v)", pages, len(all), slices.IsSorted(all))
	}

	count := func(q string) int {
		t.Helper()
		var p DevicePage
		r := f.admin("GET", "/api/v1/devices?limit=1000&"+q, "")
		expect(t, q, r, 200)
		r.decode(t, &p)
		return len(p.Devices)
	}
	for q, want := range map[string]int{
		"type=b": 50, "label=site=south": 50, "label=site=south&label=floor=2": 50, "label=site=north&type=b": 0,
		"online=true": 10, "online=false": 240, "search=DEV-24": 10, "search=dev-100": 1, "type=b&online=true": 2,
	} {
		if got := count(q); got != want {
			t.Errorf("%s: %d devices, want %d", q, got, want)
		}
	}
	var p DevicePage
	f.admin("GET", "/api/v1/devices?limit=2&latest=true", "").decode(t, &p)
	if len(p.Devices) != 2 || p.Next != "dev-001" {
		t.Errorf("limit=2: %d devices, next %q", len(p.Devices), p.Next)
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "online=maybe", "label=nokey", "label==v", "latest=perhaps"} {
		expect(t, q, f.admin("GET", "/api/v1/devices?"+q, ""), 400, "bad_request")
	}
}

// TestTelemetryAPI: latest (one device and several), series raw and
// bucketed with each aggregation, and the 400s and 404s.
func TestTelemetryAPI(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.addDevice("m-1", "", nil)
	f.addDevice("m-2", "", nil)
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Minute).UnixMilli()
	var b strings.Builder
	b.WriteString("[")
	for i := range 60 { // one value per 10 s over 10 minutes: 0..59
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"ts": %d, "metrics": {"v": %d}}`, base+int64(i)*10_000, i)
	}
	b.WriteString("]")
	if err := f.ingest("m-1", b.String()); err != nil {
		t.Fatal(err)
	}
	if err := f.ingest("m-2", `{"metrics": {"w": 7}}`); err != nil {
		t.Fatal(err)
	}
	var latest []LatestSample
	f.admin("GET", "/api/v1/devices/m-1/telemetry/latest", "").decode(t, &latest)
	if len(latest) != 1 || latest[0].Value != 59 {
		t.Errorf("latest = %+v", latest)
	}
	var many struct {
		Latest map[string][]LatestSample `json:"latest"`
	}
	f.admin("GET", "/api/v1/telemetry/latest?device=m-1&device=m-2&device=ghost", "").decode(t, &many)
	if len(many.Latest) != 3 || many.Latest["m-2"][0].Value != 7 || len(many.Latest["ghost"]) != 0 {
		t.Errorf("latest of several = %+v", many)
	}

	q := fmt.Sprintf("from=%d&to=%d", base, base+599_999)
	var pts []store.Point
	f.admin("GET", "/api/v1/devices/m-1/telemetry/v?"+q, "").decode(t, &pts)
	if len(pts) != 60 {
		t.Errorf("raw: %d points, want 60", len(pts))
	}
	for agg, first := range map[string]float64{"avg": 2.5, "min": 0, "max": 5, "last": 5} {
		f.admin("GET", "/api/v1/devices/m-1/telemetry/v?step=1m&agg="+agg+"&"+q, "").decode(t, &pts)
		if len(pts) != 10 || pts[0].TS != base || pts[0].Value != first {
			t.Errorf("step=1m agg=%s: %d points, first %+v; want 10, first %g", agg, len(pts), pts[0], first)
		}
	}
	for _, bad := range []string{"from=yesterday", "to=x", "step=0s", "step=-1m", "step=fast", "agg=median",
		fmt.Sprintf("from=%d&to=%d", base, base-1), "from=7d&step=1s"} {
		expect(t, bad, f.admin("GET", "/api/v1/devices/m-1/telemetry/v?"+bad, ""), 400, "bad_request")
	}
	expect(t, "series of unknown device", f.admin("GET", "/api/v1/devices/ghost/telemetry/v", ""), 404)
	expect(t, "latest of unknown device", f.admin("GET", "/api/v1/devices/ghost/telemetry/latest", ""), 404)
	expect(t, "latest of none", f.admin("GET", "/api/v1/telemetry/latest", ""), 400)
}

// TestDeadLettersAPI: an out-of-range reading becomes a dead letter,
// listed (with paging) and shown; replay under the same schema is 422 and
// the dead letter stays; after a "restart" with a relaxed schema the
// replay stores it and it leaves the default list.
func TestDeadLettersAPI(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.addDevice("s-1", "strict", nil)
	for i := range 3 {
		if err := f.ingest("s-1", fmt.Sprintf(`{"metrics": {"temp": %d}}`, 500+i)); err == nil {
			t.Fatal("an out-of-range reading was accepted")
		}
	}
	var page DeadLetterPage
	r := f.admin("GET", "/api/v1/deadletters?device=s-1&limit=2", "")
	expect(t, "list", r, 200)
	r.decode(t, &page)
	if len(page.DeadLetters) != 2 || page.Next == "" || page.DeadLetters[0].Reason != "out_of_range" {
		t.Fatalf("first page = %+v", page)
	}
	f.admin("GET", "/api/v1/deadletters?device=s-1&after="+page.Next, "").decode(t, &page)
	if len(page.DeadLetters) != 1 || page.Next != "" {
		t.Fatalf("second page = %+v", page)
	}
	dl := page.DeadLetters[0]
	var one DeadLetter
	f.admin("GET", fmt.Sprintf("/api/v1/deadletters/%d", dl.ID), "").decode(t, &one)
	if one.Payload != `{"metrics": {"temp": 502}}` || one.Device != "s-1" {
		t.Errorf("show = %+v", one)
	}
	r = f.admin("POST", fmt.Sprintf("/api/v1/deadletters/%d/replay", dl.ID), "")
	expect(t, "replay under the same schema", r, 422, "still_invalid")
	expect(t, "replay unknown", f.admin("POST", "/api/v1/deadletters/999999/replay", ""), 404, "not_found")
	expect(t, "replay bad id", f.admin("POST", "/api/v1/deadletters/abc/replay", ""), 400, "bad_request")
	expect(t, "show unknown", f.admin("GET", "/api/v1/deadletters/999999", ""), 404)
	for _, q := range []string{"limit=0", "after=x", "replayed=maybe"} {
		expect(t, q, f.admin("GET", "/api/v1/deadletters?"+q, ""), 400, "bad_request")
	}

	// Relax: temp may be anything now.
	relaxed := strictTypes()
	relaxed["strict"].Metrics["temp"] = telemetry.MetricSpec{Type: "number"}
	f.s.Ingest = f.pipeline(relaxed)
	r = f.admin("POST", fmt.Sprintf("/api/v1/deadletters/%d/replay", dl.ID), "")
	expect(t, "replay under the relaxed schema", r, 200)
	f.admin("GET", "/api/v1/deadletters?device=s-1", "").decode(t, &page)
	if len(page.DeadLetters) != 2 {
		t.Errorf("after replay %d dead letters listed, want 2", len(page.DeadLetters))
	}
	f.admin("GET", "/api/v1/deadletters?device=s-1&replayed=true", "").decode(t, &page)
	if len(page.DeadLetters) != 3 || page.DeadLetters[2].ReplayedAt == nil {
		t.Errorf("with replayed: %+v", page.DeadLetters)
	}
	var latest []LatestSample
	f.admin("GET", "/api/v1/devices/s-1/telemetry/latest", "").decode(t, &latest)
	if len(latest) != 1 || latest[0].Value != 502 {
		t.Errorf("replayed reading not stored: %+v", latest)
	}
}

// TestSummaryAPI: device counts and the reading/rejection rates, which
// count the last whole seconds.
func TestSummaryAPI(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	f.addDevice("a", "strict", nil)
	f.addDevice("b", "", nil)
	if err := f.reg.SetPresence(context.Background(), "a", true, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := f.ingest("b", `{"metrics": {"x": 1, "y": 2, "z": 3}}`); err != nil {
		t.Fatal(err)
	}
	f.ingest("a", `{"metrics": {"temp": 1000}}`) // rejected
	var s Summary
	// Rates cover whole seconds before now: wait for the second to pass.
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.admin("GET", "/api/v1/summary", "").decode(t, &s)
		if s.Rates.ReadingsPerSec > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s.Devices != (DeviceCounts{Total: 2, Online: 1, Offline: 1}) {
		t.Errorf("devices = %+v", s.Devices)
	}
	var readings, rejections uint64
	for i := range s.Rates.Readings {
		readings += s.Rates.Readings[i]
		rejections += s.Rates.Rejections[i]
	}
	if readings != 3 || rejections != 1 || len(s.Rates.Readings) != 60 || s.Rates.ReadingsPerSec <= 0 || s.Rates.RejectionsPerSec <= 0 {
		t.Errorf("rates = %+v; want 3 readings and 1 rejection counted", s.Rates)
	}
	if len(s.RecentRejections) != 1 || s.RecentRejections[0].Device != "a" || s.RecentRejections[0].Type != EventRejection {
		t.Errorf("recent rejections = %+v", s.RecentRejections)
	}
}

// TestTokensAPI: list (marks the caller's), create (201, the secret once,
// and it works), delete (204; the deleted token stops working), delete the
// last (409), unknown (404), bad name (400).
func TestTokensAPI(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	r := f.admin("POST", "/api/v1/tokens", `{"name": "ci"}`)
	expect(t, "create", r, 201)
	var ct CreatedToken
	r.decode(t, &ct)
	if ct.Token.Name != "ci" || !strings.HasPrefix(ct.Secret, "fha_") {
		t.Fatalf("created = %+v", ct)
	}
	var list TokenList
	f.do("GET", "/api/v1/tokens", "", bearer(ct.Secret)).decode(t, &list)
	if len(list.Tokens) != 2 || list.Current != ct.Token.ID || strings.Contains(fmt.Sprint(list), ct.Secret) {
		t.Errorf("list = %+v", list)
	}
	expect(t, "bad name", f.admin("POST", "/api/v1/tokens", `{"name": ""}`), 400)
	expect(t, "delete ci", f.admin("DELETE", "/api/v1/tokens/"+ct.Token.ID, ""), 204)
	expect(t, "deleted token", f.do("GET", "/api/v1/info", "", bearer(ct.Secret)), 401)
	expect(t, "delete unknown", f.admin("DELETE", "/api/v1/tokens/nope", ""), 404)
	f.admin("GET", "/api/v1/tokens", "").decode(t, &list)
	expect(t, "delete the last token", f.admin("DELETE", "/api/v1/tokens/"+list.Tokens[0].ID, ""), 409, "last_token")
}

// TestNotFoundAndMethods: unknown API paths are JSON 404s; a known path
// with the wrong method is a JSON 405 with Allow.
func TestNotFoundAndMethods(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	expect(t, "unknown path", f.admin("GET", "/api/v1/nothing", ""), 404, "not_found")
	r := f.admin("PUT", "/api/v1/devices", "{}")
	expect(t, "wrong method", r, 405, "method_not_allowed")
	if a := r.header.Get("Allow"); a != "GET, POST" {
		t.Errorf("Allow = %q, want GET, POST", a)
	}
	r = f.admin("GET", "/api/v1/info", "")
	var info Info
	r.decode(t, &info)
	if info.Store != "tsdb" || info.MQTT == "" || r.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("info = %+v, headers %v", info, r.header)
	}
	var types struct {
		Types []struct{ Name string } `json:"types"`
	}
	f.admin("GET", "/api/v1/types", "").decode(t, &types)
	if len(types.Types) != 1 || types.Types[0].Name != "strict" {
		t.Errorf("types = %+v", types)
	}
}

// TestMetricsNeedToken: /metrics is not public, and counts API requests by
// route and code.
func TestMetricsNeedToken(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	expect(t, "metrics without token", f.do("GET", "/metrics", "", auth{}), 401)
	f.admin("GET", "/api/v1/devices?limit=0", "")
	r := f.admin("GET", "/metrics", "")
	expect(t, "metrics", r, 200)
	for _, want := range []string{
		`fieldhub_http_requests_total{code="400",route="GET /api/v1/devices"} 1`,
		`fieldhub_http_auth_failures_total{reason="missing"} 1`,
		`fieldhub_events_subscribers 0`,
	} {
		if !strings.Contains(r.body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
