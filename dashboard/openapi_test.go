package dashboard

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestOpenAPIMatchesRoutes walks the route table against openapi.json:
// every registered route is documented and every documented operation is
// registered; public routes (and only they) declare `security: []`; every
// path parameter is declared; every $ref resolves. GET /api/v1/openapi.json
// serves the same document.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	f := newFixture(t, fixtureOpts{commands: true})
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openapiDoc, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi = %q, want 3.x", doc.OpenAPI)
	}
	type op struct {
		Security   *[]any `json:"security"`
		Parameters []struct {
			Name string `json:"name"`
			In   string `json:"in"`
		} `json:"parameters"`
		Responses map[string]any `json:"responses"`
	}
	documented := map[string]op{}
	for path, methods := range doc.Paths {
		for m, raw := range methods {
			var o op
			if err := json.Unmarshal(raw, &o); err != nil {
				t.Fatalf("%s %s: %v", m, path, err)
			}
			documented[strings.ToUpper(m)+" "+path] = o
		}
	}
	registered := map[string]Route{}
	for _, r := range f.s.Routes() {
		registered[r.Method+" "+r.Path] = r
	}
	if len(registered) < 30 {
		t.Fatalf("only %d routes registered", len(registered))
	}
	param := regexp.MustCompile(`\{([^}]+)\}`)
	for key, r := range registered {
		o, ok := documented[key]
		if !ok {
			t.Errorf("route %s is not in openapi.json", key)
			continue
		}
		public := o.Security != nil && len(*o.Security) == 0
		if public != r.Public {
			t.Errorf("%s: documented public=%v, registered public=%v", key, public, r.Public)
		}
		if !r.Public && o.Responses["401"] == nil {
			t.Errorf("%s: authenticated route documents no 401", key)
		}
		for _, m := range param.FindAllStringSubmatch(r.Path, -1) {
			if !slices.ContainsFunc(o.Parameters, func(p struct {
				Name string `json:"name"`
				In   string `json:"in"`
			}) bool {
				return p.Name == m[1] && p.In == "path"
			}) {
				t.Errorf("%s: path parameter %q not declared", key, m[1])
			}
		}
	}
	for key := range documented {
		if _, ok := registered[key]; !ok {
			t.Errorf("openapi.json documents %s, which is not registered", key)
		}
	}

	// Every $ref points at something.
	var all map[string]any
	json.Unmarshal(openapiDoc, &all)
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				var cur any = all
				for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
					m, _ := cur.(map[string]any)
					cur = m[part]
				}
				if cur == nil {
					t.Errorf("unresolved $ref %s", ref)
				}
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(all)

	r := f.do("GET", "/api/v1/openapi.json", "", auth{})
	if r.code != 200 || r.body != string(openapiDoc) {
		t.Errorf("GET /api/v1/openapi.json: %d, %d bytes", r.code, len(r.body))
	}
}
