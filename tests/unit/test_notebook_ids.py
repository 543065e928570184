from burn.notebooks import with_cell_ids


def test_a_cell_without_an_id_gets_the_same_id_every_run():
    def nb():
        return {"cells": [{"id": "keep", "source": ["a"]}, {"source": ["b = 1\n", "b"]},
                          {"source": "b = 1\nb"}]}

    first, second = with_cell_ids(nb()), with_cell_ids(nb())
    ids = [c["id"] for c in first["cells"]]
    assert ids == [c["id"] for c in second["cells"]]
    assert ids[0] == "keep" and len(set(ids)) == 3  # the position counts: same source, two ids
    assert all(len(i) <= 64 and i.replace("-", "").replace("_", "").isalnum() for i in ids)
