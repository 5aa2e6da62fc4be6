package deploy_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/fieldhub/fieldhub/config"
	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/internal/testkit"
)

// There is no Docker engine on the test machines, so these tests check the
// compose files, the Dockerfile and deploy/ against fieldhub's code: every
// FIELDHUB_* variable is a config key and the set makes a valid config,
// every port is one fieldhub listens on, every file a service mounts or
// builds exists, and the parts agree with each other (tokens, URLs, paths).

type composeFile struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

type service struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Expose      []string          `yaml:"expose"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   any               `yaml:"depends_on"`
}

func loadCompose(t *testing.T, rel string) (*composeFile, string) {
	t.Helper()
	path := filepath.Join(testkit.RepoRoot(), rel)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	if len(c.Services) == 0 {
		t.Fatalf("%s: no services", rel)
	}
	return &c, filepath.Dir(path)
}

// interpolate applies compose's ${NAME:-default} and ${NAME} with an empty
// environment: the defaults are what a plain `docker compose up` uses.
var varRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-([^}]*))?\}`)

func interpolate(s string) string {
	return varRE.ReplaceAllString(s, "$3")
}

// envKeys maps FIELDHUB_* variable names to config keys.
func envKeys() map[string]string {
	m := map[string]string{}
	for _, k := range config.Keys() {
		m[config.EnvPrefix+"_"+strings.ToUpper(strings.ReplaceAll(k, ".", "_"))] = k
	}
	return m
}

// fieldhubConfig loads the config a service's environment gives fieldhub.
func fieldhubConfig(t *testing.T, env map[string]string) *config.Config {
	t.Helper()
	keys := envKeys()
	for _, kv := range os.Environ() { // nothing from the test's own environment
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, config.EnvPrefix+"_") {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
	for name, v := range env {
		if !strings.HasPrefix(name, config.EnvPrefix+"_") {
			continue
		}
		if _, ok := keys[name]; !ok {
			t.Errorf("%s is not a fieldhub config key (configs/fieldhub.yaml has none that maps to it)", name)
			continue
		}
		t.Setenv(name, interpolate(v))
	}
	cfg, err := config.Load("", nil)
	if err != nil {
		t.Fatalf("the service's FIELDHUB_* variables do not make a valid config: %v", err)
	}
	return cfg
}

func port(addr string) string {
	if addr == "" {
		return ""
	}
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// containerPort is the container side of "8080", "127.0.0.1:8080:8080",
// "8080:8080/tcp".
func containerPort(spec string) string {
	spec = strings.TrimSuffix(strings.TrimSuffix(spec, "/tcp"), "/udp")
	return spec[strings.LastIndex(spec, ":")+1:]
}

func runsFieldhubServe(s service) bool {
	return s.Image == "fieldhub:local" && len(s.Entrypoint) == 0 && (len(s.Command) == 0 || s.Command[0] == "serve")
}

func TestComposeFiles(t *testing.T) {
	for _, rel := range []string{"docker-compose.yml", "deploy/cluster/compose.yaml"} {
		t.Run(rel, func(t *testing.T) {
			c, dir := loadCompose(t, rel)
			fieldhubs := 0
			for name, s := range c.Services {
				t.Run(name, func(t *testing.T) {
					checkFiles(t, dir, s, c)
					if !runsFieldhubServe(s) {
						return
					}
					fieldhubs++
					cfg := fieldhubConfig(t, s.Environment)
					checkPorts(t, cfg, s)
					checkPeers(t, cfg, s, c)
				})
			}
			if fieldhubs == 0 {
				t.Fatal("no service runs `fieldhub serve`")
			}
		})
	}
}

// checkFiles: build contexts, Dockerfiles and bind-mounted files exist;
// named volumes are declared.
func checkFiles(t *testing.T, dir string, s service, c *composeFile) {
	t.Helper()
	if s.Build != nil {
		ctx := filepath.Join(dir, s.Build.Context)
		df := s.Build.Dockerfile
		if df == "" {
			df = "Dockerfile"
		}
		if _, err := os.Stat(filepath.Join(ctx, df)); err != nil {
			t.Errorf("build: %v", err)
		}
		if _, err := os.Stat(filepath.Join(ctx, "go.mod")); err != nil {
			t.Errorf("build context %s is not the repository: %v", s.Build.Context, err)
		}
	}
	if s.Image == "" && s.Build == nil {
		t.Error("neither image nor build")
	}
	for _, v := range s.Volumes {
		src, _, ok := strings.Cut(v, ":")
		if !ok {
			continue
		}
		if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
			if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
				t.Errorf("volume %s: %v", v, err)
			}
		} else if _, ok := c.Volumes[src]; !ok {
			t.Errorf("volume %s: named volume %q is not declared", v, src)
		}
	}
}

// checkPorts: every published or exposed port is one of the listeners the
// config enables, and the HTTP port (and with the broker role the MQTT
// ports) are reachable.
func checkPorts(t *testing.T, cfg *config.Config, s service) {
	t.Helper()
	listens := map[string]string{port(cfg.HTTP.Addr): "http.addr"}
	if cfg.Has(config.RoleBroker) {
		for key, a := range map[string]string{"mqtt.addr": cfg.MQTT.Addr, "mqtt.ws_addr": cfg.MQTT.WSAddr, "mqtt.tls.addr": cfg.MQTT.TLS.Addr} {
			if p := port(a); p != "" {
				listens[p] = key
			}
		}
	}
	offered := map[string]bool{}
	for _, p := range append(append([]string{}, s.Ports...), s.Expose...) {
		cp := containerPort(p)
		offered[cp] = true
		if _, ok := listens[cp]; !ok {
			t.Errorf("port %s: fieldhub listens on none of its container port %s (it listens on %v)", p, cp, listens)
		}
	}
	for p, key := range listens {
		if !offered[p] {
			t.Errorf("%s (port %s) is neither published nor exposed", key, p)
		}
	}
}

// checkPeers: the broker and store URLs name services of the file, with
// matching ports and credentials.
func checkPeers(t *testing.T, cfg *config.Config, s service, c *composeFile) {
	t.Helper()
	if cfg.Store.Backend == "influx" {
		u, err := url.Parse(cfg.Store.Influx.URL)
		if err != nil {
			t.Fatal(err)
		}
		ix, ok := c.Services[u.Hostname()]
		if !ok {
			t.Fatalf("store.influx.url %s: no service %q", cfg.Store.Influx.URL, u.Hostname())
		}
		for key, want := range map[string]string{
			"DOCKER_INFLUXDB_INIT_ADMIN_TOKEN": cfg.Store.Influx.Token,
			"DOCKER_INFLUXDB_INIT_ORG":         cfg.Store.Influx.Org,
			"DOCKER_INFLUXDB_INIT_BUCKET":      cfg.Store.Influx.Bucket,
		} {
			if got := interpolate(ix.Environment[key]); got != want {
				t.Errorf("%s of %s is %q, fieldhub uses %q", key, u.Hostname(), got, want)
			}
		}
		if u.Port() != "8086" {
			t.Errorf("store.influx.url port %s, InfluxDB listens on 8086", u.Port())
		}
	}
	if cfg.MQTT.URL != "" {
		u, err := url.Parse(cfg.MQTT.URL)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.Services[u.Hostname()]; !ok {
			t.Errorf("mqtt.url %s: no service %q", cfg.MQTT.URL, u.Hostname())
		}
	}
}

// TestComposeDevicesim: the simulated fleet's profile is in the image and
// it reaches the hub's MQTT listener and data volume.
func TestComposeDevicesim(t *testing.T) {
	c, _ := loadCompose(t, "docker-compose.yml")
	ds, ok := c.Services["devicesim"]
	if !ok {
		t.Fatal("no devicesim service")
	}
	if len(ds.Entrypoint) != 1 || ds.Entrypoint[0] != "devicesim" || len(ds.Command) == 0 || ds.Command[0] != "run" {
		t.Fatalf("devicesim runs %v %v", ds.Entrypoint, ds.Command)
	}
	flags := map[string]string{}
	for _, a := range ds.Command[1:] {
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		flags[k] = v
	}
	dockerfile, err := os.ReadFile(filepath.Join(testkit.RepoRoot(), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	prof := flags["profile"]
	if !strings.HasPrefix(prof, "/etc/fieldhub/devicesim/") || !strings.Contains(string(dockerfile), "COPY configs/devicesim/ /etc/fieldhub/devicesim/") {
		t.Errorf("profile %s is not copied into the image by the Dockerfile", prof)
	}
	if _, err := os.Stat(filepath.Join(testkit.RepoRoot(), "configs/devicesim", filepath.Base(prof))); err != nil {
		t.Errorf("profile: %v", err)
	}
	if flags["fieldhub"] != "/usr/local/bin/fieldhub" || !strings.Contains(string(dockerfile), "/usr/local/bin/") {
		t.Errorf("--fieldhub %s is not where the Dockerfile puts the binary", flags["fieldhub"])
	}
	hub := c.Services["fieldhub"]
	cfg := fieldhubConfig(t, hub.Environment)
	u, err := url.Parse(flags["broker"])
	if err != nil || u.Hostname() != "fieldhub" || u.Port() != port(cfg.MQTT.Addr) {
		t.Errorf("--broker %s: want tcp://fieldhub:%s", flags["broker"], port(cfg.MQTT.Addr))
	}
	if flags["data-dir"] != cfg.DataDir {
		t.Errorf("--data-dir %s, the hub's data_dir is %s", flags["data-dir"], cfg.DataDir)
	}
	shared := false
	for _, v := range ds.Volumes {
		for _, hv := range hub.Volumes {
			if v == hv && strings.HasSuffix(v, ":"+cfg.DataDir) {
				shared = true
			}
		}
	}
	if !shared {
		t.Errorf("devicesim does not mount the hub's data_dir volume (%v vs %v)", ds.Volumes, hub.Volumes)
	}
}

// TestDockerfile: the image's stages, ports and defaults agree with the code.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{"FROM golang:1.26", "FROM node:", "npm ci", "npm run build", "CGO_ENABLED=0", "./cmd/fieldhub", "./cmd/devicesim", "USER fieldhub"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	def, err := config.Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^EXPOSE (.*)$`).FindStringSubmatch(df)
	if m == nil {
		t.Fatal("no EXPOSE")
	}
	exposed := strings.Fields(m[1])
	slices.Sort(exposed)
	want := []string{port(def.MQTT.Addr), port(def.MQTT.WSAddr), port(def.HTTP.Addr)}
	slices.Sort(want)
	if !slices.Equal(exposed, want) {
		t.Errorf("EXPOSE %v, the default listeners are %v", exposed, want)
	}
	keys := envKeys()
	for _, m := range regexp.MustCompile(`(?m)^ENV (FIELDHUB_[A-Z_]+)=`).FindAllStringSubmatch(df, -1) {
		if _, ok := keys[m[1]]; !ok {
			t.Errorf("ENV %s is not a config key", m[1])
		}
	}
	// The embed pattern must find the UI where the build stage puts it.
	if !strings.Contains(df, "dashboard/web/dist/") {
		t.Error("the built UI is not copied to dashboard/web/dist")
	}
}

// TestGrafanaProvisioning: the data sources and dashboards Grafana loads
// are valid, found where compose mounts them, and refer to each other.
func TestGrafanaProvisioning(t *testing.T) {
	root := testkit.RepoRoot()
	c, _ := loadCompose(t, "docker-compose.yml")
	g := c.Services["grafana"]
	mounts := map[string]string{}
	for _, v := range g.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && strings.HasPrefix(parts[0], ".") {
			mounts[filepath.Clean(parts[0])] = parts[1]
		}
	}
	if mounts["deploy/grafana/provisioning"] != "/etc/grafana/provisioning" {
		t.Errorf("provisioning mounted at %q", mounts["deploy/grafana/provisioning"])
	}

	var ds struct {
		Datasources []struct {
			Name, UID, Type, URL string
			SecureJSONData       map[string]string `yaml:"secureJsonData"`
			JSONData             map[string]any    `yaml:"jsonData"`
		} `yaml:"datasources"`
	}
	readYAML(t, filepath.Join(root, "deploy/grafana/provisioning/datasources/fieldhub.yaml"), &ds)
	uids := map[string]bool{}
	for _, d := range ds.Datasources {
		uids[d.UID] = true
		u, err := url.Parse(d.URL)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.Services[u.Hostname()]; !ok {
			t.Errorf("data source %s: no service %q", d.Name, u.Hostname())
		}
		for _, v := range d.SecureJSONData {
			if name, ok := strings.CutPrefix(v, "$"); ok {
				if _, set := g.Environment[name]; !set {
					t.Errorf("data source %s uses $%s, which grafana's environment does not set", d.Name, name)
				}
				ix := c.Services[u.Hostname()]
				if interpolate(g.Environment[name]) != interpolate(ix.Environment["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]) {
					t.Errorf("grafana's $%s is not InfluxDB's admin token", name)
				}
			}
		}
		if d.Type == "influxdb" && (d.JSONData["organization"] != "fieldhub" || d.JSONData["defaultBucket"] != "fieldhub") {
			t.Errorf("data source %s: org/bucket %v", d.Name, d.JSONData)
		}
	}

	var prov struct {
		Providers []struct {
			Options struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, filepath.Join(root, "deploy/grafana/provisioning/dashboards/fieldhub.yaml"), &prov)
	if len(prov.Providers) != 1 || mounts["deploy/grafana/dashboards"] != prov.Providers[0].Options.Path {
		t.Errorf("dashboards provider path %+v, mounted at %q", prov, mounts["deploy/grafana/dashboards"])
	}
	files, _ := filepath.Glob(filepath.Join(root, "deploy/grafana/dashboards/*.json"))
	if len(files) == 0 {
		t.Fatal("no dashboard")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d map[string]any
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if d["uid"] == nil || d["title"] == nil {
			t.Errorf("%s: no uid or title", f)
		}
		for _, m := range regexp.MustCompile(`"uid":\s*"([^"]+)"`).FindAllStringSubmatch(string(b), -1) {
			if m[1] != d["uid"] && !uids[m[1]] {
				t.Errorf("%s refers to data source %q, which is not provisioned", filepath.Base(f), m[1])
			}
		}
		if !strings.Contains(string(b), `r._measurement == \"telemetry\"`) || !strings.Contains(string(b), "r.device") {
			t.Errorf("%s does not query fieldhub's data model (measurement telemetry, tag device)", filepath.Base(f))
		}
	}
}

// TestBrokerConfigExamples: the example EMQX and mosquitto-go-auth configs
// call paths the auth hook serves.
func TestBrokerConfigExamples(t *testing.T) {
	root := testkit.RepoRoot()
	h, err := dashboard.NewBrokerAuth(dashboard.BrokerAuthOptions{Auth: denyAll{}, Secret: "CHANGE-ME-auth-hook-secret"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	ask := func(path string) int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(`{"clientid":"d","username":"d","password":"x","topic":"devices/d/telemetry","action":"publish","acc":2}`))
		req.Header.Set("Authorization", "Bearer CHANGE-ME-auth-hook-secret")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	emqx, err := os.ReadFile(filepath.Join(root, "deploy/emqx/emqx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	paths := regexp.MustCompile(`url = "http://fieldhub-control:8080(/[^"]+)"`).FindAllStringSubmatch(string(emqx), -1)
	goauth, err := os.ReadFile(filepath.Join(root, "deploy/mosquitto/go-auth.conf"))
	if err != nil {
		t.Fatal(err)
	}
	paths = append(paths, regexp.MustCompile(`(?m)^auth_opt_http_\w+_uri (\S+)$`).FindAllStringSubmatch(string(goauth), -1)...)
	if len(paths) != 5 {
		t.Fatalf("found %d hook URLs in the examples, want 2 (EMQX) + 3 (go-auth)", len(paths))
	}
	for _, p := range paths {
		if st := ask(p[1]); st == http.StatusNotFound || st == http.StatusUnauthorized || st >= 500 {
			t.Errorf("%s: %d", p[1], st)
		}
	}
	// The compose cluster's control process serves the hook with that secret.
	c, _ := loadCompose(t, "deploy/cluster/compose.yaml")
	ctl := c.Services["fieldhub-control"]
	if !strings.Contains(string(emqx), "Bearer "+ctl.Environment["FIELDHUB_AUTH_HOOK_SECRET"]) {
		t.Error("emqx.conf does not send the control process's auth_hook.secret")
	}
	if !strings.Contains(string(emqx), "bootstrap_file") {
		t.Error("emqx.conf has no service accounts")
	}
	csv, _ := os.ReadFile(filepath.Join(root, "deploy/emqx/fieldhub-services.csv"))
	for _, svc := range []string{"fieldhub-ingest-1", "fieldhub-control"} {
		s := c.Services[svc]
		line := s.Environment["FIELDHUB_MQTT_USERNAME"] + "," + s.Environment["FIELDHUB_MQTT_PASSWORD"] + ","
		if !strings.Contains(string(csv), line) {
			t.Errorf("%s's credentials (%s) are not in fieldhub-services.csv", svc, line)
		}
	}
}

type denyAll struct{}

func (denyAll) AuthenticateDevice(context.Context, string, string) (bool, error) { return false, nil }

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
