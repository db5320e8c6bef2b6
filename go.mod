module github.com/asyncmesh/asyncmesh

go 1.26
