package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/broker"
	"github.com/fieldhub/fieldhub/command"
	"github.com/fieldhub/fieldhub/ingest"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store/tsdb"
	"github.com/fieldhub/fieldhub/telemetry"
)

// fixture is the HTTP side over real parts: a SQLite registry, the
// embedded TSDB, an ingest pipeline feeding the live events, and (with
// commands) a broker and command service.
type fixture struct {
	t     testing.TB
	srv   *httptest.Server
	s     *server
	reg   *registry.Registry
	st    *tsdb.Store
	ing   *ingest.Pipeline
	ev    *Events
	prom  *prometheus.Registry
	token string // an operator API token ("admin")
	types map[string]*telemetry.DeviceType
}

type fixtureOpts struct {
	commands  bool
	auth      AuthOptions
	buffer    int
	heartbeat time.Duration
}

// strictTypes has one type, "strict": temp in [-40, 125], nothing else.
func strictTypes() map[string]*telemetry.DeviceType {
	lo, hi := -40.0, 125.0
	return map[string]*telemetry.DeviceType{
		"strict": {Name: "strict", UnknownMetrics: telemetry.UnknownReject,
			Metrics: map[string]telemetry.MetricSpec{"temp": {Type: "number", Unit: "°C", Min: &lo, Max: &hi}}},
	}
}

// testPublisher adapts the broker to command.Publisher, as
// hub.BrokerPublisher does.
type testPublisher struct{ b *broker.Broker }

func (p testPublisher) Publish(topic string, payload []byte, o command.PublishOptions) error {
	return p.b.Publish(topic, payload, broker.PublishOptions{QoS: 1, Retain: o.Retain, ResponseTopic: o.ResponseTopic,
		CorrelationData: o.CorrelationData, MessageExpiry: o.MessageExpiry, ContentType: o.ContentType})
}

func (p testPublisher) Connected(id string) bool { return p.b.Connected(id) }

func newFixture(t testing.TB, o fixtureOpts) *fixture {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	reg, err := registry.Open(ctx, filepath.Join(dir, "registry.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	st, err := tsdb.Open(tsdb.Options{Dir: filepath.Join(dir, "tsdb"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	_, token, err := reg.CreateAPIToken(ctx, "admin")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, reg: reg, st: st, ev: NewEvents(o.buffer), prom: prometheus.NewRegistry(), token: token, types: strictTypes()}
	f.ing = f.pipeline(f.types)
	d := Deps{Registry: reg, Store: st, Ingest: f.ing, Events: f.ev, Types: f.types, Metrics: f.prom, Registerer: f.prom,
		Info: Info{MQTT: "127.0.0.1:1883", Store: "tsdb"}, Auth: o.auth, Heartbeat: o.heartbeat}
	if o.commands {
		b, err := broker.New(broker.Config{Addr: "127.0.0.1:0"}, broker.Deps{Auth: reg, Registerer: f.prom})
		if err != nil {
			t.Fatal(err)
		}
		svc, err := command.New(command.Options{Ledger: reg, Publisher: testPublisher{b}, DefaultTimeout: time.Minute, MaxTimeout: time.Hour, Registerer: f.prom})
		if err != nil {
			t.Fatal(err)
		}
		b.AddObserver(svc)
		if err := svc.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			b.Stop(ctx)
			svc.Stop(ctx)
		})
		d.Commands = svc
	}
	f.s = newServer(d)
	f.srv = httptest.NewServer(f.s)
	t.Cleanup(func() {
		f.ev.Close() // end event streams, so Close need not wait
		f.srv.Close()
	})
	return f
}

// pipeline starts an ingest pipeline over the fixture's registry and store
// with the given types (a "restart" with another schema).
func (f *fixture) pipeline(types map[string]*telemetry.DeviceType) *ingest.Pipeline {
	p, err := ingest.New(ingest.Options{Store: f.st, Registry: f.reg, Types: types, MaxFuture: 5 * time.Minute,
		OnCommit: f.ev.PublishSamples, OnReject: f.ev.PublishRejection})
	if err != nil {
		f.t.Fatal(err)
	}
	p.Start()
	f.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Stop(ctx)
	})
	return p
}

func (f *fixture) addDevice(id, typ string, labels map[string]string) string {
	f.t.Helper()
	_, tok, err := f.reg.CreateDevice(context.Background(), registry.DeviceSpec{ID: id, Type: typ, Labels: labels})
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

// ingest sends one QoS 1 message through the pipeline; it returns after
// the commit.
func (f *fixture) ingest(device, payload string) error {
	return f.ing.Ingest(context.Background(), device, []byte(payload), 1, time.Now())
}

// auth is how a request authenticates.
type auth struct {
	bearer string
	cookie *http.Cookie
	csrf   string
	header map[string]string
}

func bearer(tok string) auth { return auth{bearer: tok} }

// resp is a finished response.
type resp struct {
	code   int
	body   string
	header http.Header
	cookie []*http.Cookie
}

func (r resp) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.body), v); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
}

// errCode is the code of a JSON error body.
func (r resp) errCode() string {
	var e struct {
		Error APIError `json:"error"`
	}
	json.Unmarshal([]byte(r.body), &e)
	return e.Error.Code
}

func (f *fixture) do(method, path, body string, a auth) resp {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+a.bearer)
	}
	if a.cookie != nil {
		req.AddCookie(a.cookie)
	}
	if a.csrf != "" {
		req.Header.Set(CSRFHeader, a.csrf)
	}
	for k, v := range a.header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{code: res.StatusCode, body: string(b), header: res.Header, cookie: res.Cookies()}
}

// admin sends a request with the fixture's bearer token.
func (f *fixture) admin(method, path, body string) resp {
	f.t.Helper()
	return f.do(method, path, body, bearer(f.token))
}

// expect fails unless the response has the status (and error code, if
// given).
func expect(t testing.TB, what string, r resp, code int, errCode ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("%s: status %d, want %d: %s", what, r.code, code, r.body)
	}
	if len(errCode) > 0 && r.errCode() != errCode[0] {
		t.Fatalf("%s: error code %q, want %q: %s", what, r.errCode(), errCode[0], r.body)
	}
}

// login opens a web session with tok and returns the cookie and CSRF token.
func (f *fixture) login(tok string) (*http.Cookie, string) {
	f.t.Helper()
	r := f.do("POST", "/api/v1/session", fmt.Sprintf(`{"token": %q}`, tok), auth{})
	expect(f.t, "login", r, 200)
	var info SessionInfo
	r.decode(f.t, &info)
	for _, c := range r.cookie {
		if c.Name == SessionCookie {
			return c, info.CSRFToken
		}
	}
	f.t.Fatalf("login set no %s cookie: %v", SessionCookie, r.header)
	return nil, ""
}

// fillPath replaces a route's {params} with the given values (or "x").
func fillPath(path string, vals map[string]string) string {
	for {
		i := strings.IndexByte(path, '{')
		if i < 0 {
			return path
		}
		j := strings.IndexByte(path[i:], '}') + i
		name := strings.TrimSuffix(path[i+1:j], "...")
		v, ok := vals[name]
		if !ok {
			v = "x"
		}
		path = path[:i] + v + path[j+1:]
	}
}
