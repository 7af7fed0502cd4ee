"""Adobe Experience Platform: the Destination SDK package and a renderer for its templates."""
