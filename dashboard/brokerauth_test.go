package dashboard_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/broker"
	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/registry"
)

const hookSecret = "test-secret-0123456789abcdef"

// authEnv is a real registry, the embedded broker over it, and the HTTP
// auth hook over the same registry.
type authEnv struct {
	reg    *registry.Registry
	mqtt   string // tcp://host:port of the embedded broker
	hook   *httptest.Server
	tokens map[string]string // device -> token
}

func newAuthEnv(t *testing.T) *authEnv {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.Open(ctx, filepath.Join(t.TempDir(), "registry.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	e := &authEnv{reg: reg, tokens: map[string]string{}}
	for _, id := range []string{"d1", "d2", "meter.7:a_b-c"} {
		_, tok, err := reg.CreateDevice(ctx, registry.DeviceSpec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		e.tokens[id] = tok
	}
	b, err := broker.New(broker.Config{Addr: "127.0.0.1:0"}, broker.Deps{Auth: reg, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Stop(context.Background()) })
	e.mqtt = "tcp://" + b.Addrs().TCP

	h, err := dashboard.NewBrokerAuth(dashboard.BrokerAuthOptions{Auth: reg, Secret: hookSecret, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	e.hook = httptest.NewServer(h)
	t.Cleanup(e.hook.Close)
	return e
}

// connect connects to the embedded broker; nil error means accepted.
func (e *authEnv) connect(t *testing.T, clientID, user, pass string) (paho.Client, chan error, error) {
	t.Helper()
	lost := make(chan error, 1)
	o := paho.NewClientOptions().AddBroker(e.mqtt).SetClientID(clientID).SetUsername(user).SetPassword(pass).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
	cl := paho.NewClient(o)
	tok := cl.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		t.Fatal("connect: no CONNACK")
	}
	if tok.Error() != nil {
		return nil, nil, tok.Error()
	}
	t.Cleanup(func() { cl.Disconnect(50) })
	return cl, lost, nil
}

// post asks the hook; it returns the status and the decoded JSON body.
func (e *authEnv) post(t *testing.T, path string, params map[string]any, form bool) (int, map[string]any) {
	t.Helper()
	var req *http.Request
	if form {
		v := url.Values{}
		for k, x := range params {
			v.Set(k, fmt.Sprint(x))
		}
		req, _ = http.NewRequest(http.MethodPost, e.hook.URL+path, strings.NewReader(v.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		b, _ := json.Marshal(params)
		req, _ = http.NewRequest(http.MethodPost, e.hook.URL+path, strings.NewReader(string(b)))
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+hookSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("%s: body %q: %v", path, body, err)
	}
	return resp.StatusCode, out
}

// hookAuthn asks both the EMQX and the mosquitto-go-auth endpoints and
// checks they agree.
func (e *authEnv) hookAuthn(t *testing.T, clientID, user, pass string) bool {
	t.Helper()
	p := map[string]any{"clientid": clientID, "username": user, "password": pass}
	st, body := e.post(t, "/broker-auth/emqx/authn", p, false)
	if st != http.StatusOK || (body["result"] != "allow" && body["result"] != "deny") || body["is_superuser"] != false {
		t.Fatalf("emqx authn: %d %v", st, body)
	}
	emqx := body["result"] == "allow"
	for _, form := range []bool{false, true} {
		st, body := e.post(t, "/broker-auth/mosquitto/user", p, form)
		if mosq := st == http.StatusOK; mosq != emqx || body["ok"] != mosq {
			t.Fatalf("mosquitto user (form=%v): %d %v, emqx said allow=%v", form, st, body, emqx)
		}
	}
	return emqx
}

// TestBrokerAuthMatchesEmbeddedBroker runs one table of CONNECT cases, and
// one of topics and actions, against the embedded broker (its real hook,
// observed over MQTT) and against the HTTP endpoints, and wants the same
// answer from both.
func TestBrokerAuthMatchesEmbeddedBroker(t *testing.T) {
	e := newAuthEnv(t)
	d1, d2 := e.tokens["d1"], e.tokens["d2"]
	odd := "meter.7:a_b-c"

	for _, tc := range []struct {
		name                     string
		clientID, user, password string
		want                     bool
	}{
		{"device with its token", "d1", "d1", d1, true},
		{"device id with every allowed character", odd, odd, e.tokens[odd], true},
		{"wrong token", "d1", "d1", d1 + "x", false},
		{"another device's token", "d1", "d1", d2, false},
		{"unknown device", "d9", "d9", d1, false},
		{"client id is not the username", "d2", "d1", d1, false},
		{"anonymous", "d1", "", "", false},
		{"no password", "d1", "d1", "", false},
		{"username not a device id", "$SYS", "$SYS", d1, false},
		{"username with a slash", "d1/x", "d1/x", d1, false},
		{"username with a wildcard", "d+", "d+", d1, false},
	} {
		t.Run("connect/"+tc.name, func(t *testing.T) {
			_, _, err := e.connect(t, tc.clientID, tc.user, tc.password)
			embedded := err == nil
			hook := e.hookAuthn(t, tc.clientID, tc.user, tc.password)
			if embedded != tc.want || hook != tc.want {
				t.Fatalf("embedded broker accepted=%v (%v), hook allowed=%v, want %v", embedded, err, hook, tc.want)
			}
		})
	}

	for _, tc := range []struct {
		topic   string
		publish bool // else subscribe
		want    bool
	}{
		{"devices/d1/telemetry", true, true},
		{"devices/d1/replies/cmd-1", true, true},
		{"devices/d1/twin/reported", true, true},
		{"devices/d2/telemetry", true, false},
		{"devices/d1/commands/reboot", true, false},
		{"devices/d1/twin/desired", true, false},
		{"devices/d1/errors", true, false},
		{"devices/d1", true, false},
		{"$SYS/broker/x", true, false},
		{"other/topic", true, false},
		{"devices/d1/commands/#", false, true},
		{"devices/d1/commands/reboot", false, true},
		{"devices/d1/twin/desired", false, true},
		{"devices/d1/errors", false, true},
		{"devices/d1/commands/+", false, false},
		{"devices/d1/telemetry", false, false},
		{"devices/d1/replies/#", false, false},
		{"devices/d1/twin/reported", false, false},
		{"devices/d2/commands/#", false, false},
		{"devices/+/commands/#", false, false},
		{"devices/#", false, false},
		{"#", false, false},
		{"+/d1/commands/#", false, false},
		{"$SYS/#", false, false},
		{"$share/g/devices/d1/commands/#", false, false},
		{"$share/g/devices/+/telemetry", false, false},
	} {
		what := "subscribe"
		if tc.publish {
			what = "publish"
		}
		t.Run(what+"/"+tc.topic, func(t *testing.T) {
			embedded := e.embeddedACL(t, "d1", d1, tc.topic, tc.publish)
			hook := e.hookACL(t, "d1", tc.topic, tc.publish)
			if embedded != tc.want || hook != tc.want {
				t.Fatalf("embedded broker allowed=%v, hook allowed=%v, want %v", embedded, hook, tc.want)
			}
		})
	}
}

// embeddedACL asks the embedded broker: a publish is allowed when it gets
// its PUBACK (a denied QoS 1 publish of a 3.1.1 client closes the
// connection; one to a $ topic gets no answer); a subscribe when its
// SUBACK grants the filter.
func (e *authEnv) embeddedACL(t *testing.T, id, token, topic string, publish bool) bool {
	t.Helper()
	cl, lost, err := e.connect(t, id, id, token)
	if err != nil {
		t.Fatal(err)
	}
	if !publish {
		tok := cl.Subscribe(topic, 1, func(paho.Client, paho.Message) {})
		if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		// One filter; paho keys its result by the filter without a
		// $share/{group}/ prefix.
		for _, code := range tok.(*paho.SubscribeToken).Result() {
			return code < 0x80
		}
		t.Fatal("subscribe: no result")
	}
	tok := cl.Publish(topic, 1, false, `{"metrics":{"x":1}}`)
	done := make(chan struct{})
	go func() { tok.Wait(); close(done) }()
	select {
	case <-done:
		if tok.Error() != nil {
			return false
		}
		select { // a PUBACK, and still connected
		case <-lost:
			return false
		case <-time.After(50 * time.Millisecond):
			return true
		}
	case <-lost:
		return false
	case <-time.After(3 * time.Second):
		// mochi drops a client's publish to a $ topic [MQTT-4.7.2-1]
		// without an answer: not taken either.
		return false
	}
}

// hookACL asks the EMQX authz endpoint and the mosquitto acl endpoint
// (acc 2 for a publish; 4 and 1, subscribe and read, otherwise) and checks
// they agree.
func (e *authEnv) hookACL(t *testing.T, id, topic string, publish bool) bool {
	t.Helper()
	action, accs := "subscribe", []int{4, 1}
	if publish {
		action, accs = "publish", []int{2}
	}
	st, body := e.post(t, "/broker-auth/emqx/authz", map[string]any{"clientid": id, "username": id, "topic": topic, "action": action}, false)
	if st != http.StatusOK {
		t.Fatalf("emqx authz: %d %v", st, body)
	}
	emqx := body["result"] == "allow"
	for _, acc := range accs {
		for _, form := range []bool{false, true} {
			st, _ := e.post(t, "/broker-auth/mosquitto/acl", map[string]any{"clientid": id, "username": id, "topic": topic, "acc": acc}, form)
			if (st == http.StatusOK) != emqx {
				t.Fatalf("mosquitto acl acc=%d form=%v: %d, emqx said allow=%v", acc, form, st, emqx)
			}
		}
	}
	return emqx
}

// TestBrokerAuthSecret: without the shared secret the hook answers 401 and
// decides nothing; a bearer token or a basic auth password works.
func TestBrokerAuthSecret(t *testing.T) {
	e := newAuthEnv(t)
	body := `{"clientid":"d1","username":"d1","password":"` + e.tokens["d1"] + `"}`
	for _, tc := range []struct {
		name   string
		set    func(*http.Request)
		status int
	}{
		{"no credentials", func(*http.Request) {}, http.StatusUnauthorized},
		{"wrong bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }, http.StatusUnauthorized},
		{"secret as prefix", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+hookSecret+"x") }, http.StatusUnauthorized},
		{"wrong basic", func(r *http.Request) { r.SetBasicAuth("broker", "nope") }, http.StatusUnauthorized},
		{"bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+hookSecret) }, http.StatusOK},
		{"basic", func(r *http.Request) { r.SetBasicAuth("mosquitto", hookSecret) }, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, e.hook.URL+"/broker-auth/mosquitto/user", strings.NewReader(body))
			tc.set(req)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
	// go-auth's trick for the secret: user:secret@host in its http_host
	// becomes basic auth in Go's HTTP client.
	u, _ := url.Parse(e.hook.URL)
	u.User = url.UserPassword("broker", hookSecret)
	resp, err := http.Post(u.String()+"/broker-auth/mosquitto/user", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("userinfo in the URL: %d", resp.StatusCode)
	}
}

// TestBrokerAuthNoExistenceLeak: an unknown device and a known one with a
// wrong token get byte-identical answers; a superuser is never granted;
// malformed requests are 400.
func TestBrokerAuthNoExistenceLeak(t *testing.T) {
	e := newAuthEnv(t)
	raw := func(path, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, e.hook.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+hookSecret)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, path := range []string{"/broker-auth/emqx/authn", "/broker-auth/mosquitto/user"} {
		s1, b1 := raw(path, `{"clientid":"d1","username":"d1","password":"wrong"}`)
		s2, b2 := raw(path, `{"clientid":"nobody","username":"nobody","password":"wrong"}`)
		if s1 != s2 || b1 != b2 {
			t.Errorf("%s: known device %d %q, unknown %d %q: must not differ", path, s1, b1, s2, b2)
		}
	}
	tok := e.tokens["d1"]
	if st, _ := raw("/broker-auth/mosquitto/superuser", `{"username":"d1","password":"`+tok+`"}`); st != http.StatusForbidden {
		t.Errorf("superuser: %d, want 403", st)
	}
	for _, tc := range []struct{ path, body string }{
		{"/broker-auth/emqx/authz", `{"clientid":"d1","username":"d1","topic":"devices/d1/telemetry","action":"all"}`},
		{"/broker-auth/mosquitto/acl", `{"clientid":"d1","username":"d1","topic":"devices/d1/telemetry","acc":8}`},
		{"/broker-auth/mosquitto/acl", `{"clientid":"d1","username":"d1","topic":"devices/d1/telemetry"}`},
		{"/broker-auth/emqx/authn", `not json`},
		{"/broker-auth/emqx/authn", `{"username":["a"]}`},
	} {
		if st, body := raw(tc.path, tc.body); st != http.StatusBadRequest {
			t.Errorf("%s %s: %d %s, want 400", tc.path, tc.body, st, body)
		}
	}
	// acc 3 (read and write) needs both.
	for topic, want := range map[string]int{"devices/d1/telemetry": 403, "devices/d1/commands/x": 403} {
		if st, _ := raw("/broker-auth/mosquitto/acl", `{"clientid":"d1","username":"d1","topic":"`+topic+`","acc":3}`); st != want {
			t.Errorf("acc 3 %s: %d, want %d", topic, st, want)
		}
	}
	// EMQX may send GET with the parameters in the query string.
	q := url.Values{"clientid": {"d1"}, "username": {"d1"}, "password": {tok}}
	req, _ := http.NewRequest(http.MethodGet, e.hook.URL+"/broker-auth/emqx/authn?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+hookSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if out["result"] != "allow" {
		t.Errorf("GET with query: %v", out)
	}
}

// TestBrokerAuthRegistryDown: when the registry fails, the hook denies
// (503) rather than allowing.
func TestBrokerAuthRegistryDown(t *testing.T) {
	h, err := dashboard.NewBrokerAuth(dashboard.BrokerAuthOptions{Auth: failingAuth{}, Secret: hookSecret})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/broker-auth/emqx/authn", "/broker-auth/mosquitto/user"} {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(`{"clientid":"d1","username":"d1","password":"x"}`))
		req.Header.Set("Authorization", "Bearer "+hookSecret)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusServiceUnavailable || strings.Contains(w.Body.String(), `"allow"`) || strings.Contains(w.Body.String(), `"ok":true`) {
			t.Errorf("%s: %d %s", path, w.Code, w.Body)
		}
	}
	if _, err := dashboard.NewBrokerAuth(dashboard.BrokerAuthOptions{Auth: failingAuth{}}); err == nil {
		t.Error("NewBrokerAuth without a secret must fail")
	}
}

type failingAuth struct{}

func (failingAuth) AuthenticateDevice(context.Context, string, string) (bool, error) {
	return false, errors.New("database is locked")
}
