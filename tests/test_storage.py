"""raytag.storage: names under a URI are percent-encoded by `join`, as pyarrow decodes them."""
from raytag import storage

ODD_NAMES = ["x y.wav", "50%.wav", "50%25.wav", "a#b.wav", "what?.wav", "café.wav", "a+b=c,d.wav"]


def test_names_listed_under_a_file_uri_can_be_joined_and_read_back(tmp_path):
    (tmp_path / "sub dir").mkdir()
    for i, name in enumerate(ODD_NAMES):
        (tmp_path / "sub dir" / name).write_bytes(b"x" * (i + 1))
    base = f"file://{tmp_path}"
    listed = storage.list_files(storage.join(base, "sub dir"))
    assert sorted(listed) == sorted(ODD_NAMES)
    for name in listed:
        path = storage.join(base, "sub dir", name)
        assert storage.size(path) == (tmp_path / "sub dir" / name).stat().st_size, path
        assert storage.read_bytes(path) == (tmp_path / "sub dir" / name).read_bytes()
        assert storage.basename(path) == name
    assert storage.join("s3://b/p?region=r", "x y", "50%.wav") == "s3://b/p/x%20y/50%25.wav?region=r"


def test_the_parent_of_a_uri_keeps_its_options():
    """An option's value may hold "/" (an endpoint URL): the parent is taken before the "?"."""
    options = "?endpoint_override=http://m:9000"
    assert storage.parent(f"s3://b/x/exp{options}") == f"s3://b/x{options}"
    assert storage.parent(f"s3://b/x/exp/{options}") == f"s3://b/x{options}"
    assert storage.parent("s3://b/x/exp") == "s3://b/x"
    assert storage.parent("s3://b") == "s3://b"  # a bucket has no parent folder to go to
    assert storage.parent("file:///r/x") == "file:///r" and storage.parent("file:///r") == "file:///"
    assert storage.parent("/r/x/exp/") == "/r/x"
