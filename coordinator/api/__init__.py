"""The REST API: the app with its error map, one router per area."""
