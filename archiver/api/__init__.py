"""Talking to Cloudflare: the client (auth, paging, retries, error mapping) and the request
scheduler every request of a token waits its turn in.

Its one rule: nothing here touches the database; what comes back is JSON, or an error from
archiver.errors.
"""
