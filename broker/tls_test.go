package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type pki struct {
	dir                       string
	ca, serverCert, serverKey string
	clientCert, clientKey     string
	otherCA                   string
}

// newPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate signed by the CA, plus an unrelated CA.
func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	p := pki{dir: dir}
	serial := int64(1)
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	keyPEM := func(name string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, "PRIVATE KEY", der)
	}
	sign := func(tmpl, parent *x509.Certificate, pub, priv any) *x509.Certificate {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	caKey := newKey()
	ca := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "fieldhub test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, nil, &caKey.PublicKey, caKey)
	p.ca = write("ca.pem", "CERTIFICATE", ca.Raw)

	srvKey := newKey()
	srv := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames: []string{"localhost"}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		ca, &srvKey.PublicKey, caKey)
	p.serverCert, p.serverKey = write("server.pem", "CERTIFICATE", srv.Raw), keyPEM("server.key", srvKey)

	cliKey := newKey()
	cli := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "dev-a"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, &cliKey.PublicKey, caKey)
	p.clientCert, p.clientKey = write("client.pem", "CERTIFICATE", cli.Raw), keyPEM("client.key", cliKey)

	otherKey := newKey()
	other := sign(&x509.Certificate{Subject: pkix.Name{CommonName: "other CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, &otherKey.PublicKey, otherKey)
	p.otherCA = write("other-ca.pem", "CERTIFICATE", other.Raw)
	return p
}

func TestTLS(t *testing.T) {
	p := newPKI(t)
	rec := &recorder{}
	e := newEnv(t, Config{TLS: TLSConfig{Addr: "127.0.0.1:0", CertFile: p.serverCert, KeyFile: p.serverKey}}, handleAll(rec))
	host, port := hostPort(t, e.b.Addrs().TLS)
	base := []string{"-h", host, "-p", port, "-i", "dev-a", "-u", "dev-a", "-P", e.tokens["dev-a"],
		"-t", "devices/dev-a/telemetry", "-q", "1"}

	if _, stderr, err := runTool(t, "mosquitto_pub", append(base, "--cafile", p.ca, "-m", "over-tls")...); err != nil {
		t.Fatalf("mosquitto_pub over TLS: %v: %s", err, stderr)
	}
	eventually(t, "TLS publish handled", func() bool { return len(rec.all()) == 1 })
	if m := rec.all()[0]; string(m.Payload) != "over-tls" || m.Device != "dev-a" {
		t.Fatalf("got %+v", m)
	}
	// A client that does not trust the server's CA fails the handshake.
	if _, _, err := runTool(t, "mosquitto_pub", append(base, "--cafile", p.otherCA, "-m", "x")...); err == nil {
		t.Fatal("mosquitto_pub trusted a server certificate from another CA")
	}
	// The token is still required over TLS.
	bad := append(append([]string{}, base...), "--cafile", p.ca, "-m", "x")
	bad[9] = "wrong-token" // -P
	if _, stderr, err := runTool(t, "mosquitto_pub", bad...); err == nil || !strings.Contains(stderr, "bad user name or password") {
		t.Fatalf("wrong token over TLS: %v: %s", err, stderr)
	}
	// The plain TCP listener keeps working alongside.
	if rc := e.rawDevice("dev-b", 4); rc.ping() != nil {
		t.Fatal("TCP listener")
	}
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	rec := &recorder{}
	e := newEnv(t, Config{TLS: TLSConfig{Addr: "127.0.0.1:0", CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.ca}}, handleAll(rec))
	host, port := hostPort(t, e.b.Addrs().TLS)
	base := []string{"-h", host, "-p", port, "-i", "dev-a", "-u", "dev-a", "-P", e.tokens["dev-a"],
		"-t", "devices/dev-a/telemetry", "-q", "1", "--cafile", p.ca}

	before := e.counter(e.b.m.closed.WithLabelValues("tls_handshake"))
	if _, stderr, err := runTool(t, "mosquitto_pub", append(base, "-m", "no-cert")...); err == nil {
		t.Fatalf("mosquitto_pub without a client certificate connected: %s", stderr)
	}
	if _, stderr, err := runTool(t, "mosquitto_pub", append(base, "--cert", p.clientCert, "--key", p.clientKey, "-m", "with-cert")...); err != nil {
		t.Fatalf("mosquitto_pub with a CA-signed client certificate: %v: %s", err, stderr)
	}
	eventually(t, "mTLS publish handled", func() bool { return len(rec.all()) == 1 })
	if m := rec.all()[0]; string(m.Payload) != "with-cert" {
		t.Fatalf("got %+v", m)
	}
	eventually(t, "tls_handshake counted", func() bool {
		return e.counter(e.b.m.closed.WithLabelValues("tls_handshake")) > before
	})
}

func TestTLSConfigErrors(t *testing.T) {
	p := newPKI(t)
	for _, c := range []struct {
		name string
		tls  TLSConfig
		want string
	}{
		{"missing cert", TLSConfig{Addr: "127.0.0.1:0", CertFile: filepath.Join(p.dir, "nope.pem"), KeyFile: p.serverKey}, "load TLS certificate"},
		{"key mismatch", TLSConfig{Addr: "127.0.0.1:0", CertFile: p.serverCert, KeyFile: p.clientKey}, "load TLS certificate"},
		{"client CA not PEM", TLSConfig{Addr: "127.0.0.1:0", CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.serverKey}, "no PEM certificate"},
		{"client CA missing", TLSConfig{Addr: "127.0.0.1:0", CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: filepath.Join(p.dir, "nope")}, "client CA"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := New(Config{TLS: c.tls}, Deps{Auth: denyAll{}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New: %v, want an error mentioning %q", err, c.want)
			}
		})
	}
}
