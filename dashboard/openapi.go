package dashboard

import (
	_ "embed"
	"net/http"
)

// openapiDoc is the hand-written OpenAPI 3 description of the API.
// TestOpenAPIMatchesRoutes keeps it and the route table in step.
//
//go:embed openapi.json
var openapiDoc []byte

// openapi serves the API description. It is public: it describes the API,
// it holds no data.
func (s *server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(openapiDoc)
}
