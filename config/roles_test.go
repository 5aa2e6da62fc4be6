package config

import (
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestRolesDefaultAndSources(t *testing.T) {
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Roles, AllRoles) {
		t.Fatalf("default roles = %v, want %v", c.Roles, AllRoles)
	}

	t.Setenv("FIELDHUB_ROLES", "ingest, command")
	t.Setenv("FIELDHUB_MQTT_URL", "tcp://broker:1883")
	t.Setenv("FIELDHUB_STORE_BACKEND", "influx")
	if c, err = Load("", nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Roles, []string{"ingest", "command"}) || c.Has(RoleBroker) || !c.Has(RoleCommand) {
		t.Fatalf("env roles = %v", c.Roles)
	}

	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	for _, k := range Keys() {
		fs.String(FlagName(k), "", "")
	}
	if err := fs.Parse([]string{"--roles", "ingest"}); err != nil {
		t.Fatal(err)
	}
	if c, err = Load("", fs); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Roles, []string{"ingest"}) {
		t.Fatalf("flag roles = %v", c.Roles)
	}

	file := writeFile(t, "roles: [command, dashboard]\nmqtt:\n  url: ssl://broker:8883\n")
	t.Setenv("FIELDHUB_ROLES", "")
	if c, err = Load(file, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Roles, []string{"command", "dashboard"}) {
		t.Fatalf("file roles = %v", c.Roles)
	}
}

func TestRolesErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       string
	}{
		{"unknown role", "roles: [broker, ingest, command, web]\n", `roles: "web" is not one of`},
		{"duplicate", "roles: [ingest, ingest]\nmqtt:\n  url: tcp://b:1883\nstore:\n  backend: influx\n", `"ingest" is listed twice`},
		{"empty", "roles: []\n", "roles: must name at least one"},
		{"broker alone", "roles: [broker]\n", "roles: the broker role needs the ingest and command roles"},
		{"external without url", "roles: [ingest]\n", "mqtt.url: is required"},
		{"url with the embedded broker", "mqtt:\n  url: tcp://b:1883\n", "mqtt.url: is for processes without the broker role"},
		{"bad scheme", "roles: [ingest]\nmqtt:\n  url: http://b:1883\n", `mqtt.url: scheme "http"`},
		{"credentials in url", "roles: [ingest]\nmqtt:\n  url: tcp://u:p@b:1883\n", "mqtt.url: must not hold credentials"},
		{"dashboard reads an empty tsdb", "roles: [command, dashboard]\nmqtt:\n  url: tcp://b:1883\n", "roles: the dashboard role without ingest"},
		{"client cert without key", "roles: [ingest]\nmqtt:\n  url: ssl://b:8883\n  client_tls:\n    cert: /nonexistent.pem\n", "mqtt.client_tls.cert"},
		{"short secret", "auth_hook:\n  secret: short\n", "auth_hook.secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFile(t, tc.file), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
