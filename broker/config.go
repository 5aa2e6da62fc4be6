package broker

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Defaults applied by Config.Validate to zero fields.
const (
	DefaultMaxPacketSize  = 256 << 10
	DefaultConnectTimeout = 10 * time.Second
	DefaultReceiveMaximum = 64
	DefaultMaxQueued      = 1024
	DefaultMaxClients     = 100000
	DefaultMaxInflight    = 64
)

// Bounds checked by Config.Validate.
const (
	// minPacketSize must hold a CONNECT with a 128-character id and token.
	minPacketSize = 512
	// maxPacketSize is the largest packet MQTT can express: a 1-byte type,
	// a 4-byte remaining length and 268,435,455 bytes (MQTT 5 §1.5.5).
	maxPacketSize     = 268435455 + 5
	maxConnectTimeout = 5 * time.Minute
	// maxQueued bounds the per-client outbound channel mochi allocates up
	// front (8 bytes a slot), so a typo cannot cost gigabytes.
	maxQueued = 1 << 20
)

// TLSConfig enables the MQTT over TLS listener when Addr is set.
type TLSConfig struct {
	Addr     string // e.g. ":8883"; "" disables TLS
	CertFile string // PEM server certificate (chain)
	KeyFile  string // PEM private key
	// ClientCAFile, when set, requires every client to present a
	// certificate signed by this CA (mutual TLS) in addition to its token.
	ClientCAFile string
}

// Config configures the broker's listeners and limits. The zero value of a
// limit means its default; see Validate.
type Config struct {
	Addr   string // TCP, e.g. ":1883"; "" disables
	WSAddr string // WebSocket, e.g. ":1882" (paths "/mqtt" and "/"); "" disables
	TLS    TLSConfig

	// MaxPacketSize bounds every packet from a client, CONNECT included.
	// The fixed header is checked before the body is allocated, so a
	// client claiming 256 MB is disconnected without costing memory.
	MaxPacketSize uint32
	// ConnectTimeout closes a connection that has not sent a complete
	// CONNECT in time (TLS and WebSocket handshakes included).
	ConnectTimeout time.Duration
	// ReceiveMaximum bounds inflight QoS>0 publishes from one client.
	ReceiveMaximum uint16
	// MaxQueued bounds pending outbound writes per client; a message to a
	// client whose queue is full is dropped and counted.
	MaxQueued int32
	// MaxClients bounds concurrently connected clients.
	MaxClients int64
	// MaxInflight bounds outbound QoS>0 messages awaiting a client's ack.
	MaxInflight uint16
}

// Validate fills in defaults and checks ranges. Its errors name the field.
func (c *Config) Validate() error {
	var errs []error
	if c.Addr == "" && c.WSAddr == "" && c.TLS.Addr == "" {
		errs = append(errs, errors.New("no MQTT listener enabled: set Addr, WSAddr or TLS.Addr"))
	}
	for _, a := range []struct{ field, addr string }{
		{"Addr", c.Addr}, {"WSAddr", c.WSAddr}, {"TLS.Addr", c.TLS.Addr},
	} {
		if a.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", a.field, a.addr, err))
		}
	}
	if c.TLS.Addr != "" {
		if c.TLS.CertFile == "" {
			errs = append(errs, errors.New("TLS.CertFile is required when TLS.Addr is set"))
		}
		if c.TLS.KeyFile == "" {
			errs = append(errs, errors.New("TLS.KeyFile is required when TLS.Addr is set"))
		}
	} else if c.TLS.CertFile != "" || c.TLS.KeyFile != "" || c.TLS.ClientCAFile != "" {
		// A certificate without an address would silently leave TLS off.
		errs = append(errs, errors.New("TLS.Addr is empty but TLS certificate files are set"))
	}

	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = DefaultMaxPacketSize
	}
	if c.MaxPacketSize < minPacketSize || c.MaxPacketSize > maxPacketSize {
		errs = append(errs, fmt.Errorf("MaxPacketSize %d is out of range [%d, %d]", c.MaxPacketSize, minPacketSize, maxPacketSize))
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.ConnectTimeout < 0 || c.ConnectTimeout > maxConnectTimeout {
		errs = append(errs, fmt.Errorf("ConnectTimeout %s is out of range (0, %s]", c.ConnectTimeout, maxConnectTimeout))
	}
	if c.ReceiveMaximum == 0 {
		c.ReceiveMaximum = DefaultReceiveMaximum
	}
	if c.MaxQueued == 0 {
		c.MaxQueued = DefaultMaxQueued
	}
	if c.MaxQueued < 0 || c.MaxQueued > maxQueued {
		errs = append(errs, fmt.Errorf("MaxQueued %d is out of range [1, %d]", c.MaxQueued, maxQueued))
	}
	if c.MaxClients == 0 {
		c.MaxClients = DefaultMaxClients
	}
	if c.MaxClients < 0 {
		errs = append(errs, fmt.Errorf("MaxClients %d is negative", c.MaxClients))
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("broker config: %w", err)
	}
	return nil
}
