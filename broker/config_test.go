package broker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want string // error fragment naming the field; "" = valid
	}{
		{"defaults", Config{Addr: ":1883"}, ""},
		{"ws only", Config{WSAddr: "127.0.0.1:0"}, ""},
		{"no listener", Config{}, "no MQTT listener"},
		{"bad addr", Config{Addr: "1883"}, "Addr \"1883\""},
		{"bad ws addr", Config{WSAddr: "nohost"}, "WSAddr"},
		{"tls without cert", Config{TLS: TLSConfig{Addr: ":8883", KeyFile: "k"}}, "TLS.CertFile"},
		{"tls without key", Config{TLS: TLSConfig{Addr: ":8883", CertFile: "c"}}, "TLS.KeyFile"},
		{"cert without tls addr", Config{Addr: ":1883", TLS: TLSConfig{CertFile: "c", KeyFile: "k"}}, "TLS.Addr is empty"},
		{"packet size too small", Config{Addr: ":1883", MaxPacketSize: 100}, "MaxPacketSize"},
		{"packet size too big", Config{Addr: ":1883", MaxPacketSize: 300 << 20}, "MaxPacketSize"},
		{"negative connect timeout", Config{Addr: ":1883", ConnectTimeout: -time.Second}, "ConnectTimeout"},
		{"huge connect timeout", Config{Addr: ":1883", ConnectTimeout: time.Hour}, "ConnectTimeout"},
		{"negative queue", Config{Addr: ":1883", MaxQueued: -1}, "MaxQueued"},
		{"huge queue", Config{Addr: ":1883", MaxQueued: 1 << 30}, "MaxQueued"},
		{"negative clients", Config{Addr: ":1883", MaxClients: -5}, "MaxClients"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg
			err := cfg.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate: %v, want an error naming %q", err, c.want)
			}
		})
	}
	cfg := Config{Addr: ":1883"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Config{Addr: ":1883", MaxPacketSize: 256 << 10, ConnectTimeout: 10 * time.Second, ReceiveMaximum: 64,
		MaxQueued: 1024, MaxClients: 100000, MaxInflight: 64}
	if cfg != want {
		t.Fatalf("defaults %+v, want %+v", cfg, want)
	}
}

// denyAll is an Authenticator for tests that never get as far as a CONNECT.
type denyAll struct{}

func (denyAll) AuthenticateDevice(context.Context, string, string) (bool, error) { return false, nil }

func TestNewErrors(t *testing.T) {
	if _, err := New(Config{Addr: ":0"}, Deps{}); err == nil || !strings.Contains(err.Error(), "Auth") {
		t.Fatalf("New without Auth: %v", err)
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Addr: ":0"}, Deps{Auth: denyAll{}, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Addr: ":0"}, Deps{Auth: denyAll{}, Registerer: reg}); err == nil {
		t.Fatal("second broker registered the same metrics without error")
	}
	// A busy port fails Start with the address in the error; Stop is a no-op.
	b1, err := New(Config{Addr: "127.0.0.1:0"}, Deps{Auth: denyAll{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b1.Stop(context.Background())
	b2, err := New(Config{Addr: "127.0.0.1:0", WSAddr: b1.Addrs().TCP}, Deps{Auth: denyAll{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Start(context.Background()); err == nil || !strings.Contains(err.Error(), b1.Addrs().TCP) {
		t.Fatalf("Start on a busy port: %v", err)
	}
	if err := b2.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}
