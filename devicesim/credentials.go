package devicesim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Credential is a device id and its token.
type Credential struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// ReadCredentials reads a credentials file: CSV lines "id,token" (an
// "id,token" header is allowed) or JSON lines {"id":..,"token":..}.
func ReadCredentials(path string) ([]Credential, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	creds, err := ParseCredentials(b)
	if err != nil {
		return nil, fmt.Errorf("credentials %s: %w", path, err)
	}
	return creds, nil
}

// ParseCredentials parses the content of a credentials file.
func ParseCredentials(b []byte) ([]Credential, error) {
	var out []Credential
	seen := map[string]bool{}
	add := func(line int, c Credential) error {
		if err := telemetry.ValidateDeviceID(c.ID); err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
		if c.Token == "" {
			return fmt.Errorf("line %d: device %s has an empty token", line, c.ID)
		}
		if seen[c.ID] {
			return fmt.Errorf("line %d: device %s listed twice", line, c.ID)
		}
		seen[c.ID] = true
		out = append(out, c)
		return nil
	}
	trimmed := bytes.TrimSpace(b)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for line := 1; sc.Scan(); line++ {
			l := bytes.TrimSpace(sc.Bytes())
			if len(l) == 0 {
				continue
			}
			var c Credential
			dec := json.NewDecoder(bytes.NewReader(l))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			if err := add(line, c); err != nil {
				return nil, err
			}
		}
		return out, sc.Err()
	}
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = 2
	r.TrimLeadingSpace = true
	r.Comment = '#'
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		line, _ := r.FieldPos(0)
		if line == 1 && rec[0] == "id" && rec[1] == "token" {
			continue
		}
		if err := add(line, Credential{ID: strings.TrimSpace(rec[0]), Token: strings.TrimSpace(rec[1])}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// WriteCredentials writes a CSV credentials file with mode 0600 (tokens
// are secrets), replacing it atomically.
func WriteCredentials(path string, creds []Credential) error {
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{"id", "token"})
	for _, c := range creds {
		w.Write([]string{c.ID, c.Token})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".credentials-*")
	if err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write credentials: %w", err)
	}
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	return nil
}

// CredentialMap indexes credentials by device id.
func CredentialMap(creds []Credential) map[string]string {
	m := make(map[string]string, len(creds))
	for _, c := range creds {
		m[c.ID] = c.Token
	}
	return m
}

// DeviceAdder creates a device in the hub and returns its token.
type DeviceAdder interface {
	AddDevice(ctx context.Context, id, deviceType string, labels map[string]string) (token string, err error)
}

// Provision creates, through the hub, every device of the profile that
// has no credential in existing yet, and returns the credentials of all of
// them (existing ones first, then the new ones in profile order). On error
// it returns the credentials obtained so far, so the caller can save them.
func Provision(ctx context.Context, p *Profile, adder DeviceAdder, existing []Credential) ([]Credential, error) {
	have := CredentialMap(existing)
	out := append([]Credential(nil), existing...)
	for _, spec := range p.Devices() {
		if _, ok := have[spec.ID]; ok {
			continue
		}
		token, err := adder.AddDevice(ctx, spec.ID, spec.Type.Name, spec.Type.Labels)
		if err != nil {
			return out, fmt.Errorf("provision %s: %w", spec.ID, err)
		}
		out = append(out, Credential{ID: spec.ID, Token: token})
	}
	return out, nil
}
