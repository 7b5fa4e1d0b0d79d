package mesh_test

import (
	"testing"

	"github.com/meshd/meshd/mesh"
)

func TestSPIFFEIDRoundTrip(t *testing.T) {
	for _, id := range []mesh.Identity{
		{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"},
		{TrustDomain: "example.org", Namespace: "prod-1", ServiceAccount: "api-server"},
	} {
		s := id.SPIFFEID()
		if id.String() != s {
			t.Errorf("String() = %q, want %q", id.String(), s)
		}
		got, err := mesh.ParseSPIFFEID(s)
		if err != nil {
			t.Errorf("ParseSPIFFEID(%q): %v", s, err)
			continue
		}
		if got != id {
			t.Errorf("ParseSPIFFEID(%q) = %+v, want %+v", s, got, id)
		}
	}
	if got, want := (mesh.Identity{TrustDomain: "td", Namespace: "ns1", ServiceAccount: "sa1"}).SPIFFEID(), "spiffe://td/ns/ns1/sa/sa1"; got != want {
		t.Errorf("SPIFFEID = %q, want %q", got, want)
	}
}

func TestParseSPIFFEIDRejects(t *testing.T) {
	for _, s := range []string{
		"",
		"web",
		"https://td/ns/default/sa/web",
		"spiffe://td/ns/default",
		"spiffe://td/ns/default/sa",
		"spiffe://td/ns/default/sa/",
		"spiffe://td/ns/default/sa/web/extra",
		"spiffe:///ns/default/sa/web",
		"spiffe://td/ns//sa/web",
		"spiffe://td/namespace/default/sa/web",
		"spiffe://td/ns/default/serviceaccount/web",
	} {
		if id, err := mesh.ParseSPIFFEID(s); err == nil {
			t.Errorf("ParseSPIFFEID(%q) = %+v, want an error", s, id)
		}
	}
}

func TestIdentityOf(t *testing.T) {
	c, err := mesh.NewCatalog([]mesh.Service{{Name: "web", Namespace: "shop"}, {Name: "api", ServiceAccount: "api-sa"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	web := c.Service(mesh.ServiceKey{Namespace: "shop", Name: "web"})
	if got, want := mesh.IdentityOf("td", web).SPIFFEID(), "spiffe://td/ns/shop/sa/web"; got != want {
		t.Errorf("IdentityOf(web) = %s, want %s (serviceAccount defaults to the name)", got, want)
	}
	api := c.Service(mesh.ServiceKey{Namespace: "default", Name: "api"})
	if got, want := mesh.IdentityOf("td", api).SPIFFEID(), "spiffe://td/ns/default/sa/api-sa"; got != want {
		t.Errorf("IdentityOf(api) = %s, want %s", got, want)
	}
}

func TestValidTrustDomain(t *testing.T) {
	for _, ok := range []string{"cluster.local", "example_org", "td-1"} {
		if err := mesh.ValidTrustDomain(ok); err != nil {
			t.Errorf("ValidTrustDomain(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Cluster.local", "td/x", "td:443", "t d"} {
		if err := mesh.ValidTrustDomain(bad); err == nil {
			t.Errorf("ValidTrustDomain(%q) = nil, want an error", bad)
		}
	}
}
