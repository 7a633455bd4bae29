"""twinhub.client"""
