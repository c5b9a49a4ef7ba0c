"""Where things live in the store, from integer ids only: no string from a request ever becomes
part of a key."""


def run_prefix(account_id, site_id, run_id):
    return f"logs/{int(account_id)}/{int(site_id)}/{int(run_id)}/"


def site_prefixes(account_id, site_id):
    return [f"logs/{int(account_id)}/{int(site_id)}/", f"media/{int(account_id)}/{int(site_id)}/"]


def image_key(account_id, site_id, image_id):
    return f"media/{int(account_id)}/{int(site_id)}/{int(image_id)}.png"


def image_rel_path(account_id, site_id, image_id):
    """The image's path relative to MEDIA_DIR, as stored in `Image.file_path` (kept for callers
    that read it; the store key is rebuilt from the ids, not from this column)."""
    return f"{int(account_id)}/{int(site_id)}/{int(image_id)}.png"
