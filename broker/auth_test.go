package broker

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// TestConnectCodes checks the exact CONNACK codes of every refusal for
// MQTT 3.1.1 (return codes) and MQTT 5 (reason codes) with raw packets.
func TestConnectCodes(t *testing.T) {
	e := newEnv(t, Config{}, nil)
	tok := e.tokens["dev-a"]
	cases := []struct {
		name   string
		o      connectOpts
		v3, v5 byte
		reason string // auth failure metric label, "" for success
	}{
		{"valid", connectOpts{ClientID: "dev-a", User: strp("dev-a"), Pass: strp(tok)}, 0, 0, ""},
		{"wrong token", connectOpts{ClientID: "dev-a", User: strp("dev-a"), Pass: strp(tok + "x")}, 4, 0x86, "bad_credentials"},
		{"other device's token", connectOpts{ClientID: "dev-a", User: strp("dev-a"), Pass: strp(e.tokens["dev-b"])}, 4, 0x86, "bad_credentials"},
		{"unknown device", connectOpts{ClientID: "nobody", User: strp("nobody"), Pass: strp(tok)}, 4, 0x86, "bad_credentials"},
		{"empty password", connectOpts{ClientID: "dev-a", User: strp("dev-a"), Pass: strp("")}, 4, 0x86, "no_password"},
		{"no password", connectOpts{ClientID: "dev-a", User: strp("dev-a")}, 4, 0x86, "no_password"},
		{"anonymous", connectOpts{ClientID: "dev-a"}, 5, 0x87, "anonymous"},
		{"empty username", connectOpts{ClientID: "dev-a", User: strp(""), Pass: strp(tok)}, 5, 0x87, "anonymous"},
		{"username not a device id", connectOpts{ClientID: "a/b", User: strp("a/b"), Pass: strp(tok)}, 4, 0x86, "invalid_username"},
		{"client id differs from username", connectOpts{ClientID: "dev-b", User: strp("dev-a"), Pass: strp(tok)}, 2, 0x85, "client_id_mismatch"},
		{"empty client id", connectOpts{ClientID: "", User: strp("dev-a"), Pass: strp(tok)}, 2, 0x85, "client_id_mismatch"},
	}
	for _, v := range []byte{4, 5} {
		for _, c := range cases {
			t.Run(c.name+map[byte]string{4: "/v3.1.1", 5: "/v5"}[v], func(t *testing.T) {
				before := e.counter(e.b.m.authFailures.WithLabelValues(c.reason))
				rc := dialRaw(t, e.addr, v)
				want := c.v3
				if v == 5 {
					want = c.v5
				}
				if got := rc.connect(c.o); got != want {
					t.Fatalf("CONNACK code %#x, want %#x", got, want)
				}
				if want == 0 {
					if err := rc.ping(); err != nil {
						t.Fatalf("connected client: %v", err)
					}
					return
				}
				rc.closed() // a refused connection is closed [MQTT-3.2.2-5]
				if after := e.counter(e.b.m.authFailures.WithLabelValues(c.reason)); after != before+1 {
					t.Errorf("auth failures{reason=%q} went %v -> %v", c.reason, before, after)
				}
			})
		}
	}
}

// TestConnectMosquitto drives Debian's mosquitto_pub: a valid token
// connects and publishes with 3.1.1 and 5; refusals surface as mosquitto's
// own error text.
func TestConnectMosquitto(t *testing.T) {
	rec := &recorder{}
	e := newEnv(t, Config{}, handleAll(rec))
	host, port := hostPort(t, e.addr)
	tok := e.tokens["dev-a"]
	cases := []struct {
		name    string
		args    []string
		v3, v5  string // expected stderr fragment; "" = success
		exit    [2]int // mosquitto_pub exits with the CONNACK code (3.1.1, 5)
		payload string
	}{
		{"valid", []string{"-i", "dev-a", "-u", "dev-a", "-P", tok}, "", "", [2]int{0, 0}, `{"metrics":{"t":1}}`},
		{"wrong token", []string{"-i", "dev-a", "-u", "dev-a", "-P", "nope"}, "bad user name or password", "Bad user name or password", [2]int{4, 0x86}, ""},
		{"unknown device", []string{"-i", "ghost", "-u", "ghost", "-P", tok}, "bad user name or password", "Bad user name or password", [2]int{4, 0x86}, ""},
		{"anonymous", []string{"-i", "dev-a"}, "not authorised", "Not authorized", [2]int{5, 0x87}, ""},
		{"client id differs", []string{"-i", "someone", "-u", "dev-a", "-P", tok}, "identifier rejected", "Client identifier not valid", [2]int{2, 0x85}, ""},
	}
	for _, ver := range []string{"mqttv311", "mqttv5"} {
		for _, c := range cases {
			t.Run(c.name+"/"+ver, func(t *testing.T) {
				payload := c.payload
				if payload == "" {
					payload = "x"
				}
				args := append([]string{"-h", host, "-p", port, "-V", ver, "-q", "1", "-t", "devices/dev-a/telemetry", "-m", payload}, c.args...)
				_, stderr, err := runTool(t, "mosquitto_pub", args...)
				want, wantExit := c.v3, c.exit[0]
				if ver == "mqttv5" {
					want, wantExit = c.v5, c.exit[1]
				}
				if want == "" {
					if err != nil {
						t.Fatalf("mosquitto_pub failed: %v: %s", err, stderr)
					}
					eventually(t, "handler called", func() bool {
						for _, m := range rec.all() {
							if string(m.Payload) == payload && m.ProtocolVersion == map[string]byte{"mqttv311": 4, "mqttv5": 5}[ver] {
								return true
							}
						}
						return false
					})
					return
				}
				if err == nil {
					t.Fatalf("mosquitto_pub succeeded, want refusal %q", want)
				}
				t.Logf("mosquitto_pub: %v: %s", err, strings.TrimSpace(stderr))
				if !strings.Contains(strings.ToLower(stderr), strings.ToLower(want)) {
					t.Fatalf("stderr %q does not mention %q", stderr, want)
				}
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != wantExit {
					t.Fatalf("mosquitto_pub: %v, want exit status %d", err, wantExit)
				}
			})
		}
	}
	// Exactly the valid publishes reached the handler, with their fields.
	msgs := rec.all()
	if len(msgs) != 2 {
		t.Fatalf("handler saw %d messages, want 2: %+v", len(msgs), msgs)
	}
	for _, m := range msgs {
		if m.Device != "dev-a" || m.TopicName != "devices/dev-a/telemetry" || m.Topic != (telemetry.Topic{Kind: telemetry.TopicTelemetry, Device: "dev-a"}) ||
			m.QoS != 1 || !bytes.Equal(m.Payload, []byte(`{"metrics":{"t":1}}`)) || time.Since(m.Received) > time.Hour {
			t.Errorf("unexpected message %+v", m)
		}
	}
}
